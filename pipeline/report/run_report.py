"""The report of one scoring run: `report.html` (self-contained) and `report.md` next to its metrics.json.

Everything comes from the run's own outputs: metrics.json (scores, confusion matrix, settings), errors.jsonl,
the Parquet mask shards (per-image IoU and the masks of the worst images) and the manifest (where each image
and label is). Nothing is recomputed, so the report shows what the run measured.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.images import palette
from pipeline.io.outputs import METRICS, REPORT_STEM, safe_name
from pipeline.report.document import Document, Figure, Gallery, Section, Table, write_document
from pipeline.report.errors_summary import summarize_errors
from pipeline.report.plots import (
    ConfusionScale,
    class_legend,
    confusion_heatmap,
    format_count,
    per_class_iou_chart,
)
from pipeline.report.settings import DEFAULT_WORST
from pipeline.report.sources import RunSources
from pipeline.report.thumbnails import comparison_strip
from pipeline.report.worst import mask_files, read_predictions, select_worst

ERROR_EXAMPLES = 3
NEEDS_PARQUET = ("This run wrote no Parquet mask shards (it ran with --format png), and the worst images are "
                 "chosen from the per-image IoU stored there. Run `score` with `--format parquet` or "
                 "`--format both` to get them in the report.")


def run_folder(uri: str) -> str:
    """A run's output folder from the folder itself or its metrics.json URI."""
    uri = fs.normalize(uri)
    return uri[: -len(METRICS) - 1] if fs.basename(uri) == METRICS else uri


def load_metrics(output: str, s3: fs.S3Options | None = None) -> dict[str, Any]:
    """The run's metrics.json; a clear error when the folder is not a finished `score` run."""
    uri = fs.join(output, METRICS)
    if not fs.storage_for(uri, s3).exists(uri):
        raise ConfigError(
            f"No {METRICS} in {output}: a report needs the output folder of a finished `unet-pipeline score` "
            "run (the folder given to --output). `predict` runs have no labels, hence no report."
        )
    metrics = json.loads(fs.read_bytes(uri, s3))
    if metrics.get("command") != "score" or "confusion_matrix" not in metrics:
        raise ConfigError(f"{uri} is not the metrics of a `score` run: only scored runs have a report.")
    return metrics


def _clip(text: str, limit: int = 400) -> str:
    """Long messages (nested causes, tracebacks) cut to a readable length; errors.jsonl keeps them whole."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(interval: dict[str, Any] | None) -> str:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    return f" [{interval['low']:.4f}, {interval['high']:.4f}]"


def _intervals_note(intervals: dict[str, Any] | None) -> str:
    if not intervals:
        return "none (--bootstrap 0, or a run made before intervals)"
    unit = f"groups of ids (regex {intervals['group_regex']!r})" if intervals.get("group_regex") else "images"
    return (f"[low, high]: {100 * intervals['confidence']:g}% percentile bootstrap, {intervals['resamples']} "
            f"resamples of {intervals['groups']} {unit}, seed {intervals['seed']}")


def class_intervals(metrics: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Class -> (low, high) of metrics.json's per-class IoU intervals (classes without one left out)."""
    per_class = (metrics.get("intervals") or {}).get("per_class_iou", {})
    return {name: (iv["low"], iv["high"]) for name, iv in per_class.items()
            if iv.get("low") is not None and iv.get("high") is not None}


def _summary(metrics: dict[str, Any], output: str) -> Table:
    model, dataset = metrics.get("model", {}), metrics.get("dataset", {})
    processing, backend = metrics.get("processing", {}), metrics.get("backend", {})
    timings = metrics.get("timings", {})
    layout = dataset.get("layout", "?") + (f" (split {dataset['split']})" if dataset.get("split") else "")
    processing_text = processing.get("name", "?") + "".join(
        f", {key.replace('_', ' ')} {value}" for key, value in processing.items() if key != "name" and value)
    backend_text = (f"{backend.get('name', '?')} on {backend.get('device', '?')}, precision "
                    f"{backend.get('precision', '?')}; {backend.get('actors', '?')} actor(s) x "
                    f"{backend.get('threads_per_actor', '?')} thread(s), batch "
                    f"{backend.get('batch_size', '?')}")
    by_stage = ", ".join(f"{stage} {count}" for stage, count in sorted(metrics.get("errors_by_stage",
                                                                                   {}).items()))
    num_images = metrics.get("num_images", 0)
    scored = f"{num_images} of {metrics.get('num_inputs', num_images)} inputs"
    scores = (metrics.get("intervals") or {}).get("scores", {})
    miou = (f"{_number(metrics.get('miou'))}{_interval(scores.get('miou'))} (classes present); all classes "
            f"{_number(metrics.get('miou_all_classes'))}{_interval(scores.get('miou_all_classes'))}")
    rows = [
        ("Model",
         f"{model.get('name', '?')} ({model.get('source', '?')}, backbone {model.get('backbone', '?')})"),
        ("Checkpoint", str(model.get("checkpoint", "?"))),
        ("Checkpoint SHA-256", str(model.get("checkpoint_sha256", "?"))),
        ("Dataset", str(dataset.get("uri", "?"))),
        ("Layout", layout),
        ("Processing", processing_text),
        ("Backend", backend_text),
        ("Images scored", scored),
        ("Errors", f"{metrics.get('num_errors', 0)}" + (f" ({by_stage})" if by_stage else "")),
        ("mIoU", miou),
        ("Pixel accuracy", _number(metrics.get("pixel_accuracy")) + _interval(scores.get("pixel_accuracy"))),
        ("Dice", _number(metrics.get("dice")) + _interval(scores.get("dice"))),
        ("Intervals", _intervals_note(metrics.get("intervals"))),
        ("Ignored label pixels", _ignored(metrics.get("labels"))),
        ("Wall time", f"{timings.get('wall_seconds', 0):.1f} s"),
        ("Images/s", _speed(timings)),
        ("Finished", f"{metrics.get('finished_at', '?')} (unet-pipeline {metrics.get('version', '?')})"),
        ("Output", output),
    ]
    return Table(("", ""), tuple(rows))


def _ignored(labels: dict[str, Any] | None) -> str:
    if not labels:
        return "n/a"
    share = "" if labels.get("ignored_fraction") is None else f" ({labels['ignored_fraction']:.1%})"
    ignore = labels.get("ignore_index")
    return (f"{labels['ignored_pixels']} of {labels['label_pixels']}{share}; ignore index "
            f"{'none' if ignore is None else ignore}")


def _speed(timings: dict[str, Any]) -> str:
    """Images/s of the attempt that wrote the metrics; a resumed run with nothing left says so."""
    before, now = timings.get("images_before", 0), timings.get("images_this_attempt")
    if now == 0 and before:
        return f"n/a: nothing left to do (all {before} images committed by an earlier attempt)"
    speed = str(timings.get("images_per_second"))
    return speed + (f" (over the {now} images of this attempt; {before} done before)" if before else "")


def _class_section(metrics: dict[str, Any], colours: list[tuple[int, int, int]]) -> Section:
    names = metrics["class_names"]
    iou, support = metrics["per_class_iou"], metrics["per_class_support"]
    recall = metrics.get("per_class_recall") or metrics.get("per_class_accuracy", {})
    precision = metrics.get("per_class_precision", {})  # runs before precision was recorded: n/a
    bars = class_intervals(metrics)
    chart = Figure("per-class-iou", per_class_iou_chart(names, iou, support, metrics.get("miou"), colours,
                                                        bars or None),
                   "Per-class IoU, worst first; the dashed line is the mIoU"
                   + ("; error bars: 95% bootstrap intervals." if bars else "."))
    rows = tuple((name, _number(iou.get(name)), _number(precision.get(name)), _number(recall.get(name)),
                  format_count(support.get(name, 0)))
                 + ((_interval_cell(bars.get(name)),) if bars else ())
                 for name in sorted(names, key=lambda n: (iou.get(n) is None, iou.get(n) or 0.0, n)))
    header = ("class", "IoU", "precision", "recall", "pixels") + (("IoU 95% interval",) if bars else ())
    note = ("Precision: of the pixels predicted as the class, the share that is the class; recall (per-class "
            "accuracy): of the class's labelled pixels, the share predicted as it.")
    return Section("Per-class IoU", (chart, Table(header, rows), note))


def _interval_cell(bounds: tuple[float, float] | None) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _confusion_section(metrics: dict[str, Any], scale: ConfusionScale) -> Section:
    matrix = np.asarray(metrics["confusion_matrix"], np.int64)
    explanation = ("Rows are ground-truth classes, columns predicted classes; each row is divided by its "
                   "ground-truth pixels, so the diagonal is each class's recall and the rest of the row "
                   "shows what it was mistaken for.")
    return Section("Confusion matrix", (
        explanation,
        Figure("confusion-matrix", confusion_heatmap(matrix, metrics["class_names"], scale),
               "Confusion matrix, row-normalised."),
    ))


def _worst_section(output: str, metrics: dict[str, Any], colours: list[tuple[int, int, int]], count: int,
                   s3: fs.S3Options | None) -> Section:
    title = "Worst images by per-image IoU"
    if count <= 0:
        return Section(title, ("Not requested (--worst 0).",))
    if not mask_files(output, s3):
        if metrics.get("config", {}).get("format") == "png":
            return Section(title, (NEEDS_PARQUET,))
        return Section(title, (f"No mask shards in {fs.join(output, 'masks')}: no image was scored.",))
    selection = select_worst(output, count, s3)
    if not selection.ranked:
        return Section(title, ("No image has a per-image IoU (every label pixel is ignored).",))
    predictions = read_predictions(selection.ranked, s3)
    sources = RunSources(output, metrics, s3).lookup((p.shard, p.row) for p in predictions)
    strips, rows = [], []
    for rank, predicted in enumerate(predictions, start=1):
        item = predicted.ranked
        source = sources[(predicted.shard, predicted.row)]
        caption = f"{rank}. {item.id}: IoU {item.iou:.3f}" + (" "
                                                              f"({source.problem})" if source.problem else "")
        png = comparison_strip(source.image, source.label, predicted.prediction, colours)
        strips.append(Figure(f"worst-{rank:02d}-{safe_name(item.id)}", png, caption))
        rows.append((str(rank), item.id, f"{item.iou:.4f}", item.source))
    unranked = (f" {selection.num_unranked} image(s) with every label pixel ignored have no IoU and are not "
                "ranked."
                if selection.num_unranked else "")
    explanation = ("Lowest per-image IoU (mean over the classes present in the image's label or prediction) "
                   f"of {selection.num_ranked} scored images, read from the run's Parquet output.{unranked}")
    return Section(f"The {len(predictions)} worst images by per-image IoU", (
        explanation,
        Figure("class-colours", class_legend(metrics["class_names"], colours),
               "Class colours of the overlays."),
        Gallery(tuple(strips), "Each: image | ground truth | prediction."),
        Table(("rank", "id", "IoU", "source"), tuple(rows)),
    ))


def _errors_section(output: str, metrics: dict[str, Any], s3: fs.S3Options | None) -> Section:
    kinds = summarize_errors(output, s3, ERROR_EXAMPLES)
    if kinds is None:
        missing = (f"errors.jsonl is missing from {output}; metrics.json counts "
                   f"{metrics.get('num_errors', 0)} error(s).")
        return Section("Errors", (missing,))
    if not kinds:
        return Section("Errors", ("No input failed.",))
    summary = Table(("stage", "error", "count"), tuple((k.stage, k.error_class, str(k.count)) for k in kinds))
    examples = Table(("stage", "error", "id", "source", "message"), tuple(
        (k.stage, k.error_class, str(e.get("id", "")), str(e.get("source", "")), _clip(str(e.get("error",
                                                                                                 ""))))
        for k in kinds for e in k.examples))
    total = sum(k.count for k in kinds)
    return Section("Errors", (
        f"{total} input(s) failed and were skipped; each is listed in errors.jsonl with its reason.", summary,
        f"Up to {ERROR_EXAMPLES} examples of each kind:", examples))


def run_report(output: str, metrics: dict[str, Any], s3: fs.S3Options | None = None, *,
               worst: int = DEFAULT_WORST, confusion_scale: ConfusionScale = "auto") -> Document:
    """The report of the run in `output` (its metrics.json already loaded) as a Document."""
    colours = palette(len(metrics["class_names"]))
    model = metrics.get("model", {})
    subtitle = (f"mIoU {_number(metrics.get('miou'))} on {metrics.get('num_images', 0)} images of "
                f"{metrics.get('dataset', {}).get('uri', '?')}, {metrics.get('finished_at', '')}")
    return Document(
        title=f"Scoring report: {model.get('name', '?')} on {metrics.get('dataset', {}).get('layout', '?')} "
              "data",
        subtitle=subtitle,
        sections=(
            Section("Summary", (*(f"Warning: {w}" for w in metrics.get("warnings", [])),
                                _summary(metrics, output))),
            _class_section(metrics, colours),
            _confusion_section(metrics, confusion_scale),
            _worst_section(output, metrics, colours, worst, s3),
            _errors_section(output, metrics, s3),
        ),
    )


def write_report(run_uri: str, s3: fs.S3Options | None = None, *, worst: int = DEFAULT_WORST,
                 confusion_scale: ConfusionScale = "auto", out: str | None = None,
                 metrics: dict[str, Any] | None = None) -> str:
    """Write report.html and report.md (+ report_files/) for the run at `run_uri`; return the HTML's URI.

    `run_uri` is the run's output folder (local or s3://) or its metrics.json. The report goes next to
    metrics.json unless `out` names another folder (for a run in a bucket you cannot write to).
    """
    output = run_folder(run_uri)
    metrics = metrics if metrics is not None else load_metrics(output, s3)
    document = run_report(output, metrics, s3, worst=worst, confusion_scale=confusion_scale)
    return write_document(document, fs.normalize(out) if out else output, REPORT_STEM, s3)


def report_after_run(output: str, metrics: dict[str, Any], s3: fs.S3Options | None = None) -> str | None:
    """The report at the end of `score`. A report that fails warns instead of failing a run whose scores are
    already written (whatever the cause: the scores matter more than their pictures); the warning names the
    error and gives the command that makes the report again."""
    try:
        return write_report(output, s3, metrics=metrics)
    except Exception as err:
        warnings.warn(f"report.html was not written ({type(err).__name__}: {err}). The scores are in "
                      f"{fs.join(output, METRICS)}; make the report with `unet-pipeline report {output}`.",
                      stacklevel=2)
        return None
