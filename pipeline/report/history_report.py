"""The trend report of a run history: `history.html`/`history.md` with mIoU and the weakest classes over runs.

The history is the JSON Lines file the scheduled jobs append to, one object per run (run_id, started_at,
status passed|failed, miou, per_class_iou, gate {baseline_run_id, baseline_miou, max_drop, passed,
dropped_classes}, ...). Runs are shown in the order they were recorded.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.report.document import Document, Figure, Section, Table, write_document
from pipeline.report.settings import DEFAULT_CLASSES
from pipeline.report.trend_plots import baseline_ids, class_trend, miou_trend

HISTORY_STEM = "history"
TABLE_RUNS = 30  # the run table lists this many of the latest runs


def weakest_classes(records: list[dict[str, Any]], count: int) -> list[str]:
    """The `count` classes with the lowest IoU in the latest run that has per-class IoUs (ties by name)."""
    latest: dict[str, float | None] = next(
        (r["per_class_iou"] for r in reversed(records) if r.get("per_class_iou")), {})
    scored = [(iou, name) for name, iou in latest.items() if iou is not None]
    return [name for _, name in sorted(scored)[:count]]


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _delta(value: float | None, reference: float | None) -> str:
    return "" if value is None or reference is None else f"{value - reference:+.4f}"


def _latest_summary(records: list[dict[str, Any]]) -> str:
    latest = records[-1]
    text = (f"Latest run {latest.get('run_id', '?')} ({latest.get('started_at', '?')}): "
            f"{latest.get('status', '?')}, mIoU {_number(latest.get('miou'))}")
    gate = latest.get("gate")
    if gate:
        text += (f"; gate against baseline {gate.get('baseline_run_id', '?')} (mIoU "
                 f"{_number(gate.get('baseline_miou'))}, allowed drop {gate.get('max_drop')}): "
                 f"{'passed' if gate.get('passed') else 'FAILED'}")
        drop = gate.get("drop_interval")
        if drop:
            text += (f" ({gate.get('mode', 'plain')} gate; mIoU drop {_number(drop.get('estimate'))}, paired "
                     f"95% interval [{_number(drop.get('low'))}, {_number(drop.get('high'))}])")
        if gate.get("dropped_classes"):
            text += f", classes that dropped: {', '.join(map(str, gate['dropped_classes']))}"
    return text + "."


def _run_table(records: list[dict[str, Any]]) -> Table:
    baselines = baseline_ids(records)
    rows = []
    start = max(0, len(records) - TABLE_RUNS)
    for index in range(len(records) - 1, start - 1, -1):
        record = records[index]
        previous = records[index - 1].get("miou") if index > 0 else None
        gate = record.get("gate") or {}
        rows.append((
            str(record.get("run_id",
                           "?")) + (" (baseline)" if str(record.get("run_id")) in baselines else ""),
            str(record.get("started_at") or "")[:16].replace("T", " "), str(record.get("status", "?")),
            _number(record.get("miou")),
            _delta(record.get("miou"), previous), _delta(record.get("miou"), gate.get("baseline_miou")),
            ", ".join(map(str, gate.get("dropped_classes") or [])),
            str(record.get("num_images", "")), str(record.get("num_errors", "")),
            # null: a resumed run that had nothing left to do (images/s counts only an attempt's own images)
            "n/a" if record.get("images_per_second") is None else str(record["images_per_second"]),
        ))
    return Table(("run", "started", "status", "mIoU", "vs previous", "vs baseline", "classes that dropped",
                  "images", "errors", "images/s"), tuple(rows))


def history_report(records: list[dict[str, Any]], history_uri: str,
                   classes: int = DEFAULT_CLASSES) -> Document:
    """The trend report of `records` (oldest first) as a Document."""
    if not records:
        raise ConfigError(f"{history_uri} holds no runs: run a scheduled job (or `score`) that records "
                          "history first, or point --history at the file it appends to.")
    failed = sum(1 for r in records if r.get("status") == "failed")
    weakest = weakest_classes(records, classes)
    trend_blocks: tuple = (
        Figure("miou-trend", miou_trend(records),
               "mIoU per run. Blue band: each run's mIoU 95% bootstrap interval (runs that recorded one). "
               "Red crosses and bands: failed runs; green ring: a gate's baseline run; dashed and dotted "
               "lines: the latest gate's baseline mIoU and the level below which it fails."),
    )
    if weakest:
        trend_blocks += (Figure("weakest-classes-trend", class_trend(records, weakest),
                                f"IoU per run of the {len(weakest)} weakest classes of the latest run."),)
    else:
        trend_blocks += ("No run records per-class IoU, so there is no per-class trend.",)
    shown = min(len(records), TABLE_RUNS)
    return Document(
        title="Run history",
        subtitle=f"{len(records)} runs from {history_uri}, {failed} failed",
        sections=(
            Section("Latest run", (_latest_summary(records),)),
            Section("Trends", trend_blocks),
            Section("Runs", (f"The latest {shown} of {len(records)} runs, newest first.",
                             _run_table(records))),
        ),
    )


def write_history_report(history_uri: str, s3: fs.S3Options | None = None, *, out: str | None = None,
                         classes: int = DEFAULT_CLASSES) -> str:
    """Write history.html and history.md (+ history_files/) for a history file; return the HTML's URI.

    They go into `out`, by default the folder that holds the history file.
    """
    history_uri = fs.normalize(history_uri)
    from pipeline.history import read_history

    records = read_history(history_uri, s3)
    directory = fs.normalize(out) if out else history_uri.rsplit("/", 1)[0]
    return write_document(history_report(records, history_uri, classes), directory, HISTORY_STEM, s3)
