"""The console summary of a run: what was scored, how (model, checkpoint, processing), the scores, and where
everything went. It reads only metrics.json's content, so a job log and a terminal show the same lines."""

from __future__ import annotations

from typing import Any

import click

from pipeline.io import fs
from pipeline.io.outputs import ERRORS


def _fmt(value: float | None) -> str:
    return "      n/a" if value is None else f"{value:9.4f}"


def setup_lines(metrics: dict[str, Any]) -> list[str]:
    """Model, checkpoint, dataset and processing with the parameters that change the masks."""
    model, dataset = metrics.get("model", {}), metrics.get("dataset", {})
    processing = metrics.get("processing") or {}
    sha = (model.get("checkpoint_sha256") or "")[:12]
    lines = [f"model {model.get('name')}   checkpoint {model.get('checkpoint')} (sha256 {sha}...)",
             f"dataset {dataset.get('uri')} (layout {dataset.get('layout')})"]
    params = [f"{key.replace('_', ' ')} {value}" for key, value in processing.items()
              if key != "name" and value is not None]
    size = processing.get("input_size")
    params = [f"input size {size[0]}x{size[1]}" if p.startswith("input size") and size else p for p in params]
    lines.append(f"processing {processing.get('name')}" + (f" ({', '.join(params)})" if params else ""))
    return lines + backend_lines(metrics)


def backend_lines(metrics: dict[str, Any]) -> list[str]:
    """The backend that ran (and why, when `auto` chose it) and the CPU features that decided precisions."""
    from pipeline.cpu_features import CpuFeatures

    lines = []
    backend = metrics.get("backend") or {}
    if backend.get("name"):
        why = f" ({backend['auto_reason']})" if backend.get("auto_reason") else ""
        bits = f", int8 weights {backend['int8_weight_bits']}-bit" if backend.get("int8_weight_bits") else ""
        lines.append(f"backend {backend['name']} {backend.get('precision', '')}{bits}{why}")
    if metrics.get("cpu"):
        lines.append(CpuFeatures.from_json(metrics["cpu"]).describe())
    return lines


def label_line(metrics: dict[str, Any]) -> str | None:
    labels = metrics.get("labels")
    if not labels:
        return None
    ignore = labels["ignore_index"]
    share = labels["ignored_fraction"]
    return (f"labels: ignore index {'none' if ignore is None else ignore}, ignored pixels "
            f"{labels['ignored_pixels']} of {labels['label_pixels']}"
            + ("" if share is None else f" ({share:.1%})"))


def interval_text(interval: dict[str, Any] | None) -> str:
    """` [0.79, 0.83]` for an interval of metrics.json's `intervals`; empty when there is none.

    Example:
        >>> interval_text({"estimate": 0.8123, "low": 0.7912, "high": 0.8307, "resamples": 1000})
        ' [0.79, 0.83]'
    """
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    return f" [{interval['low']:.2f}, {interval['high']:.2f}]"


def score_lines(metrics: dict[str, Any]) -> list[str]:
    """mIoU (with its bootstrap interval, when computed) and the per-class table (IoU, precision, recall,
    pixels, IoU interval)."""
    intervals = metrics.get("intervals") or {}
    scores, classes = intervals.get("scores", {}), intervals.get("per_class_iou", {})
    dice = metrics["dice"] if metrics["dice"] is None else round(metrics["dice"], 4)
    lines = [f"mIoU {metrics['miou']:.4f}{interval_text(scores.get('miou'))}   (mean over classes present; "
             f"all-classes {metrics['miou_all_classes']:.4f}{interval_text(scores.get('miou_all_classes'))})"
             f"   pixel accuracy {metrics['pixel_accuracy']:.4f}{interval_text(scores.get('pixel_accuracy'))}"
             f"   mPA {metrics['mean_pixel_accuracy']:.4f}   Dice {dice}{interval_text(scores.get('dice'))}"]
    if intervals:
        lines.append(f"  [..]: {100 * intervals['confidence']:g}% bootstrap intervals, "
                     f"{intervals['resamples']} resamples of {intervals['groups']} "
                     f"{'groups' if intervals.get('group_regex') else 'images'}")
    width = max(len(name) for name in metrics["class_names"])
    lines.append(f"  {'class'.ljust(width)}  {'IoU':>9}  {'precision':>9}  {'recall':>9}  {'pixels':>10}"
                 + ("  IoU interval" if intervals else ""))
    precision = metrics.get("per_class_precision") or {}
    for name in metrics["class_names"]:
        lines.append(f"  {name.ljust(width)}  {_fmt(metrics['per_class_iou'][name])}  "
                     f"{_fmt(precision.get(name))}  {_fmt(metrics['per_class_accuracy'][name])}  "
                     f"{metrics['per_class_support'][name]:>10}{interval_text(classes.get(name))}")
    return lines


def count_lines(metrics: dict[str, Any], output: str) -> list[str]:
    """Images, errors (and where they are listed), time and throughput of this attempt."""
    timings = metrics["timings"]
    errors = metrics["num_errors"]
    where = f" (each in {fs.join(output, ERRORS)})" if errors else ""
    line = f"{metrics['num_images']} images, {errors} errors{where}, {timings['wall_seconds']:.1f} s"
    done_now = timings.get("images_this_attempt", metrics["num_images"])
    before = timings.get("images_before", 0)
    if done_now == 0 and before:
        return [line + f": nothing left to do (every input was committed by an earlier attempt; {before} "
                       "images)"]
    speed = timings["images_per_second"]
    resumed = f" over the {done_now} images of this attempt; {before} from earlier ones" if before else ""
    return [line + f" ({speed} images/s in the pipeline{resumed})"]


def print_warnings(metrics: dict[str, Any]) -> None:
    """The run's warnings (metrics.json `warnings`: labels that look misread), on stderr, each once."""
    for warning in metrics.get("warnings", []):
        click.secho(f"WARNING: {warning}", err=True, fg="yellow", bold=True)


def print_summary(metrics: dict[str, Any], output: str) -> None:
    for line in setup_lines(metrics):
        click.echo(line)
    if metrics["command"] == "score":
        for line in score_lines(metrics):
            click.echo(line)
        labels = label_line(metrics)
        if labels:
            click.echo(labels)
    for line in count_lines(metrics, output):
        click.echo(line)
    click.echo(f"outputs: {output}")
    gate = metrics.get("gate")
    if gate:
        verdict = "passed" if gate["passed"] else "FAILED"
        drop = gate.get("drop_interval")
        paired = f", drop {drop['estimate']:.4f} [{drop['low']:.4f}, {drop['high']:.4f}]" if drop else ""
        click.echo(f"regression gate {verdict}: baseline {gate['baseline_run_id']} mIoU "
                   f"{gate['baseline_miou']:.4f}, max drop {gate['max_drop']}{paired} "
                   f"({gate.get('mode', 'plain')})")
    if metrics["command"] == "score" and metrics.get("config", {}).get("report", True):
        click.echo(f"report: {output.rstrip('/')}/report.html")
