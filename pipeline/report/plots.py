"""The run report's charts: per-class IoU bars and the row-normalised confusion matrix, as PNG bytes.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend or state), so
the report can be built in any process, including a Ray driver with no display. Every chart is `PLOT_DPI` dots
per inch at a size computed from the number of classes, and is saved without `bbox_inches="tight"`, so its
pixel size is exactly its figure size times the DPI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from pipeline.report.settings import LOG_SCALE_ABOVE_CLASSES

PLOT_DPI = 100
ConfusionScale = Literal["auto", "linear", "log"]
ANNOTATE_UP_TO_CLASSES = 12  # cell percentages are written in the heat map up to this many classes


def new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure) -> bytes:
    """PNG bytes of exactly figsize x PLOT_DPI pixels, without the matplotlib 'Software' tag."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return buffer.getvalue()


def format_count(value: int) -> str:
    """Pixel counts the way people read them: 950, 12.3k, 4.56M, 7.8G.

    Example:
        >>> format_count(950), format_count(12_345), format_count(4_560_000)
        ('950', '12.3k', '4.56M')
    """
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}"
    return str(int(value))


def per_class_iou_chart(class_names: Sequence[str], per_class_iou: dict[str, float | None],
                        support: dict[str, int], miou: float | None,
                        colours: Sequence[tuple[int, int, int]],
                        intervals: dict[str, tuple[float, float]] | None = None) -> bytes:
    """Horizontal bars of each class's IoU, worst at the top, in the class colours, with mIoU marked.

    Each label gives the class's pixel support (pixels of that class in the labels). Classes with no IoU
    (absent from both labels and predictions) are listed last as "n/a". `intervals` (class -> (low, high)),
    when given, are drawn as error bars.
    """
    indices = list(range(len(class_names)))
    scored = sorted((i for i in indices if per_class_iou.get(class_names[i]) is not None),
                    key=lambda i: (per_class_iou[class_names[i]], class_names[i]))
    unscored = [i for i in indices if per_class_iou.get(class_names[i]) is None]
    order = scored + unscored
    height = max(3.0, 0.35 * len(order) + 1.5)
    figure = new_figure(9.0, height)
    axes = figure.add_subplot()
    values = [per_class_iou[class_names[i]] or 0.0 for i in order]
    bar_colours = [tuple(c / 255 for c in colours[i]) for i in order]
    positions = np.arange(len(order))
    axes.barh(positions, values, color=bar_colours, edgecolor="#30343b", linewidth=0.6)
    with_bars = [(p, i) for p, i in zip(positions, order, strict=True)
                 if intervals and class_names[i] in intervals and per_class_iou[class_names[i]] is not None]
    if with_bars:
        centre = np.array([per_class_iou[class_names[i]] or 0.0 for _, i in with_bars])
        bounds = np.array([intervals[class_names[i]] for _, i in with_bars]).T  # type: ignore[index]
        spread = np.clip(np.stack([centre - bounds[0], bounds[1] - centre]), 0.0, None)
        axes.errorbar(centre, [p for p, _ in with_bars], xerr=spread, fmt="none", ecolor="#1d2330",
                      elinewidth=1.2, capsize=3, zorder=3)
    axes.set_yticks(positions, [f"{class_names[i]}  ({format_count(support.get(class_names[i], 0))} px)"
                                for i in order], fontsize=9)
    axes.invert_yaxis()
    for position, i in zip(positions, order, strict=True):
        iou = per_class_iou[class_names[i]]
        interval = intervals.get(class_names[i]) if intervals else None
        right = max(iou or 0.0, interval[1]) if interval else iou  # the value's label right of its error bar
        axes.text(min((right or 0.0) + 0.01, 0.9), float(position), "n/a" if iou is None else f"{iou:.3f}",
                  va="center",
                  fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
    title = "Per-class IoU, worst first" + (", 95% intervals as bars" if with_bars else "")
    if miou is not None:
        axes.axvline(miou, color="#c0392b", linestyle="--", linewidth=1.5)
        title += f" (dashed line: mIoU {miou:.3f})"
    axes.set_xlim(0, 1)
    axes.set_xlabel("IoU (label: class and its pixel support)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row (ground-truth class) divided by its sum; rows with no pixels are NaN."""
    matrix = np.asarray(matrix, dtype=np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, matrix / np.where(sums > 0, sums, 1), np.nan)


def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str],
                      scale: ConfusionScale = "auto") -> bytes:
    """The confusion matrix as a heat map, each row divided by its ground-truth pixels.

    `scale` "log" (the default for more than LOG_SCALE_ABOVE_CLASSES classes under "auto") makes the small
    off-diagonal confusions of many-class datasets visible; rows with no ground-truth pixels are grey.
    """
    count = len(class_names)
    normalised = row_normalised(matrix)
    use_log = scale == "log" or (scale == "auto" and count > LOG_SCALE_ABOVE_CLASSES)
    side = max(4.8, 0.32 * count + 2.5)
    figure = new_figure(side + 1.6, side)
    axes = figure.add_subplot()
    if use_log:
        positive = normalised[np.isfinite(normalised) & (normalised > 0)]
        floor = max(1e-4, float(positive.min())) if positive.size else 1e-4
        shown = np.where(np.isfinite(normalised), np.clip(normalised, floor, 1.0), np.nan)
        norm: Normalize = LogNorm(vmin=floor, vmax=1.0)
    else:
        shown, norm = normalised, Normalize(vmin=0.0, vmax=1.0)
    colour_map = _viridis_with_grey()
    image = axes.imshow(np.ma.masked_invalid(shown), cmap=colour_map, norm=norm, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                    label="share of the row's pixels" + (" (log scale)" if use_log else ""))
    ticks = np.arange(count)
    font = 9 if count <= 30 else 6
    axes.set_xticks(ticks, class_names, rotation=60 if count > 6 else 0,
                    ha="right" if count > 6 else "center",
                    fontsize=font)
    axes.set_yticks(ticks, class_names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title("Confusion matrix, row-normalised" + (" (log colour scale)" if use_log else ""))
    if count <= ANNOTATE_UP_TO_CLASSES:
        for row in range(count):
            for column in range(count):
                value = normalised[row, column]
                if np.isfinite(value):
                    axes.text(column, row, f"{100 * value:.1f}%", ha="center", va="center", fontsize=8,
                              color="white" if value < 0.6 else "black")
    figure.tight_layout()
    return to_png(figure)


def _viridis_with_grey():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#c8ccd2")


def class_legend(class_names: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> bytes:
    """A strip of colour swatches with class names: the key to the overlays (ignored pixels are white)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=(colours[i][0] / 255, colours[i][1] / 255, colours[i][2] / 255),
                     edgecolor="#30343b",
                     label=name if any(colours[i]) else f"{name} (black: not tinted)")
               for i, name in enumerate(class_names)]
    handles.append(Patch(facecolor="white", edgecolor="#30343b", label="ignored (255)"))
    columns = min(len(handles), 6)
    rows = -(-len(handles) // columns)
    figure = new_figure(9.0, 0.3 * rows + 0.3)
    figure.legend(handles=handles, loc="center", ncol=columns, frameon=False, fontsize=9)
    return to_png(figure)


def difference_chart(class_names: Sequence[str], differences: Sequence[tuple[float, float, float] | None],
                     changed: Sequence[bool]) -> bytes:
    """Each class's paired IoU difference (B - A) as a dot with its interval, in class order; classes whose
    interval excludes 0 in red, 0 marked. `differences` holds (estimate, low, high), None without an IoU."""
    count = len(class_names)
    figure = new_figure(9.0, max(3.0, 0.32 * count + 1.5))
    axes = figure.add_subplot()
    axes.axvline(0.0, color="#30343b", linewidth=1.0)
    for position, (difference, flagged) in enumerate(zip(differences, changed, strict=True)):
        if difference is None or any(np.isnan(v) for v in difference):
            axes.text(0.0, position, " n/a", va="center", fontsize=8, color="#6b7280")
            continue
        estimate, low, high = difference
        colour = "#c0392b" if flagged else "#2c5d9e"
        axes.errorbar([estimate], [position], xerr=[[max(estimate - low, 0.0)], [max(high - estimate, 0.0)]],
                      fmt="o", color=colour, ecolor=colour, capsize=3, markersize=5)
    axes.set_yticks(np.arange(count), list(class_names), fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("IoU of B - IoU of A, with its paired 95% interval (red: changed beyond it)")
    axes.set_title("Per-class IoU change")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return to_png(figure)
