"""`score` and `predict`: the pipeline's two jobs, with the same options."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.options import (
    build_config,
    data_options,
    execution_options,
    explicit_params,
    gate_options,
    history_options,
    model_options,
    output_options,
    processing_options,
)
from pipeline.config import RunConfig

if TYPE_CHECKING:
    from pipeline.progress import Progress
    from pipeline.results import RunResult


@dataclass(frozen=True)
class RunHooks:
    """What a program embedding the CLI (the Ray job entry points) passes as click's `obj`."""

    # e.g. LineProgress: progress lines for a job log, whatever the terminal says
    progress: Callable[[], Progress] | None = None


def run_options(func):
    """The options both run commands take (same names everywhere)."""
    for decorator in (history_options, execution_options, output_options, processing_options, data_options,
                      model_options):
        func = decorator(func)
    return func


def default_run_settings(params: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """With no --input, the built-in default (synthetic shapes + the packaged checkpoint)."""
    from pipeline.cli.options import load_config_file
    from pipeline.defaults import DEFAULT_OUTPUT, DEFAULT_RUN, default_checkpoint, default_dataset

    if params.get("input") or load_config_file(params.get("config_file")).get("input"):
        return {}
    if "checkpoint" in explicit or "layout" in explicit:
        raise click.UsageError("--checkpoint/--layout were given without --input: pass --input DATASET too.")
    click.echo("No --input: running the built-in default (synthetic shapes, packaged small milesial UNet).",
               err=True)
    return {**DEFAULT_RUN, "input": default_dataset(), "checkpoint": default_checkpoint(),
            "output": params.get("output") or DEFAULT_OUTPUT}


def print_summary(metrics: dict[str, Any], output: str) -> None:
    if metrics["command"] == "score":
        click.echo(f"mIoU {metrics['miou']:.4f}   (mean over classes present; all-classes "
                   f"{metrics['miou_all_classes']:.4f})   pixel accuracy {metrics['pixel_accuracy']:.4f}   "
                   f"mPA {metrics['mean_pixel_accuracy']:.4f}   Dice "
                   f"{metrics['dice'] if metrics['dice'] is None else round(metrics['dice'], 4)}")
        width = max(len(name) for name in metrics["class_names"])
        click.echo(f"  {'class'.ljust(width)}  {'IoU':>7}  {'acc':>7}  {'pixels':>10}")

        def fmt(v: float | None) -> str:
            return "    n/a" if v is None else f"{v:7.4f}"

        for name in metrics["class_names"]:
            iou, acc = metrics["per_class_iou"][name], metrics["per_class_accuracy"][name]
            click.echo(f"  {name.ljust(width)}  {fmt(iou)}  {fmt(acc)}  "
                       f"{metrics['per_class_support'][name]:>10}")
    timings = metrics["timings"]
    click.echo(f"{metrics['num_images']} images, {metrics['num_errors']} errors, "
               f"{timings['wall_seconds']:.1f} s ({timings['images_per_second']} images/s in the pipeline)")
    _print_backend(metrics)
    click.echo(f"outputs: {output}")
    gate = metrics.get("gate")
    if gate:
        verdict = "passed" if gate["passed"] else "FAILED"
        click.echo(f"regression gate {verdict}: baseline {gate['baseline_run_id']} mIoU "
                   f"{gate['baseline_miou']:.4f}, max drop {gate['max_drop']}")
    if metrics["command"] == "score" and metrics.get("config", {}).get("report", True):
        click.echo(f"report: {output.rstrip('/')}/report.html")


def _print_backend(metrics: dict[str, Any]) -> None:
    """The backend that ran (and why, when `auto` chose it) and the CPU features that decided precisions."""
    from pipeline.cpu_features import CpuFeatures

    backend = metrics.get("backend") or {}
    if backend.get("name"):
        why = f" ({backend['auto_reason']})" if backend.get("auto_reason") else ""
        bits = f", int8 weights {backend['int8_weight_bits']}-bit" if backend.get("int8_weight_bits") else ""
        click.echo(f"backend {backend['name']} {backend.get('precision', '')}{bits}{why}")
    if metrics.get("cpu"):
        click.echo(CpuFeatures.from_json(metrics["cpu"]).describe())


def execute(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the pipeline; a tracked run (--run-id / --history) goes through the run history and its gate."""
    from pipeline.history import run_tracked
    from pipeline.run import run

    if config.tracking.run_id or config.tracking.history:
        return run_tracked(config, lambda tracked: run(tracked, progress))
    return run(config, progress)


def _execute(config: RunConfig, as_json: bool) -> None:
    from pipeline.history import RegressionGateFailed
    from pipeline.progress import progress_for

    hooks = click.get_current_context().find_object(RunHooks) or RunHooks()
    enabled = config.execution.progress
    progress = hooks.progress() if hooks.progress and enabled is not False else progress_for(enabled)
    try:
        result = execute(config, progress)
    except RegressionGateFailed as err:  # the run itself finished: show its metrics before the failure
        _show(err.result.metrics, err.result.output, as_json)
        raise
    _show(result.metrics, result.output, as_json)


def _show(metrics: dict[str, Any], output: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        print_summary(metrics, output)


@click.command()
@run_options
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of a summary.")
@click.pass_context
def score(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Score a model on a labelled dataset: masks, per-image scores and metrics.json (mIoU, per-class
    IoU, ...).

    With no --input, runs the built-in default: a synthetic shapes dataset and a small trained checkpoint.

    \b
    Examples:
      unet-pipeline score
      unet-pipeline score -m bubbliiiing-vgg16 -c unet_vgg_voc.pth -i ~/VOCdevkit/VOC2012 -l voc -o runs/voc
      unet-pipeline score -m milesial -c unet_carvana_scale0.5_epoch2.pth -i s3://data/carvana -l carvana \\
          -o s3://results/carvana --scale 0.5 --format both
    """
    explicit = explicit_params(ctx)
    config = build_config("score", params, explicit, default_run_settings(params, explicit))
    _execute(config, as_json)


@click.command()
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout instead of a summary.")
@click.pass_context
def predict(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Predict masks (no labels needed): Parquet shards and/or one class-index PNG per image.

    \b
    Examples:
      unet-pipeline predict -m milesial -c model.pth -i photos/ -l folder -o masks/ --format png
      unet-pipeline predict -c unet_membrane.hdf5 -i s3://em/test -l folder -o s3://em/pred --format both
    """
    explicit = explicit_params(ctx)
    config = build_config("predict", params, explicit, {"layout": "folder"})
    _execute(config, as_json)
