"""The report of `unet-pipeline compare A B`: paired differences, changed classes, the most changed images.

Rendered like the run report (`report.document`: one self-contained HTML file and a Markdown file with its
figures). The thumbnails of the changed images show image | ground truth | A's mask | B's mask: the masks are
read from each run's `masks/<part>.parquet` (the row of an image there is its row in `_run/images/<part>`),
only from the files that hold a shown image; image and label are found through run A's manifest, as the run
report finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.io import fs
from pipeline.io.images import decode_png_mask, palette
from pipeline.io.outputs import MASKS, safe_name
from pipeline.metrics.compare import Comparison, ScoreChange
from pipeline.report.document import Document, Figure, Gallery, Section, Table, write_document
from pipeline.report.plots import difference_chart
from pipeline.report.sources import RunSources
from pipeline.report.thumbnails import paired_strip
from pipeline.report.worst import read_columns

if TYPE_CHECKING:
    from pipeline.intervals import ScoredRun

SCORE_LABELS = {
    "miou": "mIoU (classes present)", "miou_all_classes": "mIoU (all classes)",
    "pixel_accuracy": "pixel accuracy", "mean_pixel_accuracy": "mPA (classes present)",
    "mean_pixel_accuracy_all_classes": "mPA (all classes)", "dice": "Dice (foreground)",
}


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:+.{digits}f}"


def interval_cell(change: ScoreChange) -> str:
    d = change.difference
    return "n/a" if np.isnan(d.low) else f"[{d.low:+.4f}, {d.high:+.4f}]"


def score_rows(comparison: Comparison) -> tuple[tuple[str, ...], ...]:
    return tuple((SCORE_LABELS.get(name, name), number(c.a), number(c.b), signed(c.difference.estimate),
                  interval_cell(c), "yes" if c.changed else "")
                 for name, c in comparison.scores.items())


def class_rows(comparison: Comparison) -> tuple[tuple[str, ...], ...]:
    return tuple((c.name, number(c.a), number(c.b), signed(c.difference.estimate), interval_cell(c),
                  "yes" if c.changed else "") for c in comparison.per_class_iou)


def _masks(run: ScoredRun, indices: Sequence[int], s3: fs.S3Options | None,
           ) -> dict[int, tuple[int, int, np.ndarray | None]]:
    """Image index -> (shard, row, mask or None) in run `run`."""
    by_file: dict[str, list[tuple[int, int]]] = {}
    for i in indices:
        uri, row = run.images.location(i)
        by_file.setdefault(uri, []).append((i, row))
    out: dict[int, tuple[int, int, np.ndarray | None]] = {}
    for uri, items in by_file.items():
        rows = pa.array([row for _, row in items])
        places = read_columns(uri, ("shard", "row"), s3).take(rows)
        mask_uri = fs.join(run.output, MASKS, fs.basename(uri))
        masks: list[Any] = [None] * len(items)
        if fs.storage_for(mask_uri, s3).exists(mask_uri):
            masks = read_columns(mask_uri, ("mask_png",), s3).take(rows).column("mask_png").to_pylist()
        for (i, _), shard, row, png in zip(items, places.column("shard").to_pylist(),
                                           places.column("row").to_pylist(), masks, strict=True):
            out[i] = (int(shard), int(row), None if png is None else decode_png_mask(png))
    return out


def _changed_images(comparison: Comparison, a: ScoredRun, b: ScoredRun, s3: fs.S3Options | None) -> Section:
    title = "Images that changed most"
    if not comparison.images:
        return Section(title, ("No image has a per-image IoU in both runs.",))
    indices = [c.index for c in comparison.images]
    masks_a, masks_b = _masks(a, indices, s3), _masks(b, indices, s3)
    sources = RunSources(a.output, a.metrics, s3).lookup((masks_a[i][0], masks_a[i][1]) for i in indices)
    colours = palette(len(comparison.class_names))
    strips, rows = [], []
    for rank, change in enumerate(comparison.images, start=1):
        shard, row, mask_a = masks_a[change.index]
        mask_b = masks_b[change.index][2]
        source = sources[(shard, row)]
        caption = (f"{rank}. {change.id}: IoU {change.iou_a:.3f} -> {change.iou_b:.3f} ({change.delta:+.3f})"
                   + (f" ({source.problem})" if source.problem else ""))
        if mask_a is not None or mask_b is not None:
            png = paired_strip(source.image, source.label, mask_a, mask_b, colours)
            strips.append(Figure(f"changed-{rank:02d}-{safe_name(change.id)}", png, caption))
        rows.append((str(rank), change.id, number(change.iou_a), number(change.iou_b), signed(change.delta)))
    blocks: list[Any] = [
        f"The {len(rows)} images (of {comparison.num_images_ranked} with a per-image IoU in both runs) whose "
        "per-image IoU (mean over the classes in the image's label or prediction) changed most."]
    if strips:
        blocks.append(Gallery(tuple(strips), "Each: image | ground truth | A's prediction | B's prediction."))
    else:
        blocks.append("Neither run wrote Parquet mask parts (--format png), so there are no thumbnails.")
    blocks.append(Table(("rank", "id", "IoU A", "IoU B", "B - A"), tuple(rows)))
    return Section(title, tuple(blocks))


def compare_report(comparison: Comparison, a: ScoredRun, b: ScoredRun,
                   s3: fs.S3Options | None = None) -> Document:
    """The comparison of runs `a` and `b` as a Document."""
    settings = comparison.settings
    unit = "images" if comparison.num_groups == comparison.num_images else "groups of images"
    method = (f"Paired percentile bootstrap: {settings.resamples} resamples of the {comparison.num_groups} "
              f"{unit}, the same draws applied to both runs (seed {settings.seed}); intervals are "
              f"{100 * settings.confidence:g}%. A score changed when its interval of B - A excludes 0.")
    changed = comparison.changed_classes
    differences = [None if np.isnan(c.difference.estimate) else
                   (c.difference.estimate, c.difference.low, c.difference.high)
                   for c in comparison.per_class_iou]
    miou = comparison.scores["miou"]
    return Document(
        title="Paired comparison of two scoring runs",
        subtitle=f"B - A over {comparison.num_images} images: mIoU {signed(miou.difference.estimate)} "
                 f"{interval_cell(miou)}",
        sections=(
            Section("Runs", (Table(("", ""), (("A (baseline)", a.output), ("B", b.output),
                                              ("Images", str(comparison.num_images)))), method)),
            Section("Scores", (Table(("score", "A", "B", "B - A", "95% interval", "changed"),
                                     score_rows(comparison)),)),
            Section("Per-class IoU", (
                "Classes whose IoU changed beyond their interval: " + (", ".join(changed) or "none") + ".",
                Figure("per-class-change", difference_chart(comparison.class_names, differences,
                                                            [c.changed for c in comparison.per_class_iou]),
                       "Per-class IoU change B - A with paired 95% intervals."),
                Table(("class", "IoU A", "IoU B", "B - A", "95% interval", "changed"),
                      class_rows(comparison)),
            )),
            _changed_images(comparison, a, b, s3),
        ),
    )


def write_compare_report(comparison: Comparison, a: ScoredRun, b: ScoredRun, path: str,
                         s3: fs.S3Options | None = None) -> str:
    """Write the comparison as `<stem>.html` and `<stem>.md` (+ `<stem>_files/`); return the HTML's URI.

    `path` names the HTML or Markdown file (`cmp/report.html`) or a folder (then `compare.html` in it).
    """
    path = fs.normalize(path)
    name = fs.basename(path)
    if name.endswith((".html", ".md")):
        folder, stem = path[: -len(name) - 1] or ".", name.rsplit(".", 1)[0]
    else:
        folder, stem = path, "compare"
    return write_document(compare_report(comparison, a, b, s3), folder, stem, s3)
