"""Charts of a run history: mIoU over runs, and the IoU of the weakest classes over runs, as PNG bytes.

Runs are placed at even steps in the order they were recorded (nightly runs, re-runs and manual runs all get
the same room); tick labels give the run id and date. Runs that failed are marked with a red cross and a red
band, and the gate's baseline run with a green ring, so a regression and what it was judged against are seen
at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.ticker import FuncFormatter, MaxNLocator

from pipeline.report.plots import new_figure, to_png

TREND_SIZE_IN = (11.0, 4.6)  # width, height in inches (1100 x 460 px)
_FAILED = "#c0392b"
_BASELINE = "#1e8449"


def short_label(record: dict[str, Any]) -> str:
    """Tick label of a run: its id (up to 18 characters) and the date it started."""
    run_id = str(record.get("run_id", "?"))
    when = str(record.get("started_at") or record.get("finished_at") or "")[:16].replace("T", " ")
    return (run_id if len(run_id) <= 18 else run_id[:17] + "…") + ("\n" + when if when else "")


def _axes_for_runs(records: Sequence[dict[str, Any]], title: str, ylabel: str):
    figure = new_figure(*TREND_SIZE_IN)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.set_xlim(-0.5, len(records) - 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    axes.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: short_label(records[int(x)]) if 0 <= int(x) < len(records) and x == int(x) else ""))
    axes.tick_params(axis="x", labelsize=7)
    axes.grid(alpha=0.3)
    for index, record in enumerate(records):
        if record.get("status") == "failed":
            axes.axvspan(index - 0.5, index + 0.5, color=_FAILED, alpha=0.08, linewidth=0)
    return figure, axes


def baseline_ids(records: Sequence[dict[str, Any]]) -> set[str]:
    """Run ids that served as the baseline of some run's gate."""
    return {str(r["gate"]["baseline_run_id"]) for r in records
            if r.get("gate") and r["gate"].get("baseline_run_id")}


def miou_trend(records: Sequence[dict[str, Any]]) -> bytes:
    """mIoU per run with its 95% interval as a band (runs that recorded one); failed runs as red crosses (at
    the bottom when they have no mIoU), baselines ringed, and the latest gate's baseline mIoU and threshold
    (baseline - max drop) as horizontal lines."""
    figure, axes = _axes_for_runs(records, "mIoU over runs", "mIoU")
    points = [(i, r["miou"]) for i, r in enumerate(records) if r.get("miou") is not None]
    bands = [(i, r["miou_interval"]) for i, r in enumerate(records) if r.get("miou_interval")]
    if bands:  # the run's own 95% interval: a drop inside the band is what another sample could give
        axes.fill_between([i for i, _ in bands], [b[0] for _, b in bands], [b[1] for _, b in bands],
                          color="#2c5d9e", alpha=0.18, linewidth=0, label="mIoU 95% interval", zorder=1)
    if points:
        axes.plot([i for i, _ in points], [v for _, v in points], color="#2c5d9e", linewidth=1.5, marker="o",
                  markersize=4, label="mIoU", zorder=2)
    values = [v for _, v in points] + [b[0] for _, b in bands]
    low = min(values) if values else 0.0
    failed = [(i, r.get("miou")) for i, r in enumerate(records) if r.get("status") == "failed"]
    if failed:
        label = "failed run" + (" (no mIoU: drawn at the bottom)" if any(v is None for _,
                                                                         v in failed) else "")
        axes.scatter([i for i, _ in failed], [low if v is None else v for _, v in failed], marker="X", s=90,
                     color=_FAILED, label=label, zorder=3)
    baselines = baseline_ids(records)
    ringed = [(i, r["miou"]) for i, r in enumerate(records)
              if str(r.get("run_id")) in baselines and r.get("miou") is not None]
    if ringed:
        axes.scatter([i for i, _ in ringed], [v for _, v in ringed], s=220, facecolors="none",
                     edgecolors=_BASELINE,
                     linewidths=2, label="baseline run", zorder=4)
    gate = next((r["gate"] for r in reversed(records) if r.get("gate")), None)
    if gate and gate.get("baseline_miou") is not None:
        axes.axhline(gate["baseline_miou"], color=_BASELINE, linestyle="--", linewidth=1.2,
                     label=f"baseline mIoU {gate['baseline_miou']:.3f} ({gate.get('baseline_run_id', '?')})")
        if gate.get("max_drop") is not None:
            axes.axhline(gate["baseline_miou"] - gate["max_drop"], color=_FAILED, linestyle=":",
                         linewidth=1.2,
                         label=f"gate: fail below {gate['baseline_miou'] - gate['max_drop']:.3f}")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return to_png(figure)


def class_trend(records: Sequence[dict[str, Any]], classes: Sequence[str]) -> bytes:
    """IoU per run of each of `classes` (the weakest ones); failed runs shaded red, baseline runs marked."""
    figure, axes = _axes_for_runs(records, f"IoU of the {len(classes)} weakest classes over runs", "IoU")
    for name in classes:
        points = [(i, (r.get("per_class_iou") or {}).get(name)) for i, r in enumerate(records)]
        points = [(i, v) for i, v in points if v is not None]
        axes.plot([i for i, _ in points], [v for _, v in points], marker="o", markersize=3, linewidth=1.3,
                  label=name)
    baselines = baseline_ids(records)
    for index, record in enumerate(records):
        if str(record.get("run_id")) in baselines:
            axes.axvline(index, color=_BASELINE, linestyle="--", linewidth=1.0)
    axes.set_ylim(0, 1)
    axes.legend(loc="best", fontsize=8, title="class (green dashes: baseline run)", title_fontsize=8)
    figure.tight_layout()
    return to_png(figure)
