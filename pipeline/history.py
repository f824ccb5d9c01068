"""Scheduled scoring: run ids, the run history file, and the regression gate.

A tracked run (`--run-id ID` and/or `--history FILE`) writes under `<output>/<run id>/`. The default run id
(given `--history` and no `--run-id`) is the UTC start time plus a short hash of the settings that decide the
results, so nightly runs of one configuration sort by time and different configurations are told apart at a
glance.

With `--history`, each finished run leaves one JSON line there (local file or s3:// object):

    {"run_id", "started_at", "finished_at", "status": "passed"|"failed", "model", "checkpoint",
     "checkpoint_sha256", "dataset", "layout", "miou", "miou_all_classes", "per_class_iou",
     "images_per_second", "num_images", "num_errors", "output", "metrics_uri", "gate": {...} | null,
     "miou_interval": [low, high] | null}

Re-running a run id replaces that run's outputs (the pipeline clears its own files first) and its history
line, never adding a second one. The file is rewritten whole on each append: locally through a temporary file
and a rename, on S3 as one PUT (S3 has no append). Two jobs appending to one history at the same moment can
lose one line (the last writer wins), so schedule runs that share a history one after another.

With `--baseline RUN_ID|last-good`, a scoring run whose mIoU falls more than `--max-drop` below the baseline's
is recorded as failed and raises RegressionGateFailed, naming every class whose IoU dropped. The gate also
records the drop's paired bootstrap interval (`gate.drop_interval`, both runs resampled with the same images,
`pipeline.intervals.miou_drop`); with `--gate significant` the run fails only when that whole interval lies
above `--max-drop`, so a small validation set's noise does not fail it. When the two runs cannot be paired
(different ids, a baseline folder gone), the significant gate falls back to the plain threshold and says why
in `gate.significant_unavailable`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.results import RunFailed, RunResult

LAST_GOOD = "last-good"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
Runner = Callable[[RunConfig], RunResult]
"""Runs the pipeline into `config.output` (`pipeline.run.run`, with its progress display bound)."""

logger = logging.getLogger(__name__)


class RegressionGateFailed(RunFailed):
    """The run's mIoU fell more than --max-drop below baseline. Its outputs and history line were written."""

    def __init__(self, message: str, result: RunResult, gate: dict[str, Any]) -> None:
        super().__init__(message, result)
        self.result: RunResult = result
        self.gate = gate


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def new_run_id(config: RunConfig, now: datetime | None = None) -> str:
    """`20261124T020000Z-1a2b3c4d`: UTC start time, then the config hash."""
    return f"{(now or _utc_now()):%Y%m%dT%H%M%SZ}-{config.config_hash()}"


def check_run_id(run_id: str) -> str:
    """A run id becomes a folder name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError(f"--run-id {run_id!r} is not usable as a folder name: use letters, digits, '.', "
                          "'_' and '-' (at most 128, starting with a letter or digit), e.g. "
                          "nightly-2026-11-24.")
    return run_id


def with_run_id(config: RunConfig) -> RunConfig:
    """The config with its run id filled in: the given one, or a new one when --history is set."""
    if config.tracking.run_id or not config.tracking.history:
        return config
    return config.replace(run_id=new_run_id(config))


def run_output(config: RunConfig) -> str:
    """Where a run writes: `<output>/<run id>` for a tracked run, else `<output>`."""
    output = fs.normalize(config.output.uri)
    run_id = config.tracking.run_id
    return fs.join(output, check_run_id(run_id)) if run_id else output


def read_history(uri: str, s3: fs.S3Options | None = None) -> list[dict]:
    """The records of a history file, oldest first; [] when it does not exist yet."""
    storage = fs.storage_for(uri, s3)
    if not storage.exists(uri):
        return []
    records = []
    for number, line in enumerate(fs.read_bytes(uri, s3).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{uri} line {number} is not JSON ({err.msg}): fix or delete that line; every "
                                "line of a run history is one run's JSON record.") from err
        if not isinstance(record, dict) or "run_id" not in record:
            raise ConfigError(f"{uri} line {number} is not a run record (no run_id): fix or delete that "
                              "line.")
        records.append(record)
    return records


def append_history(uri: str, record: dict[str, Any], s3: fs.S3Options | None = None) -> None:
    """Add `record` as the last line, replacing any line with the same run_id (read, modify, write whole)."""
    records = [r for r in read_history(uri, s3) if r["run_id"] != record["run_id"]]
    records.append(record)
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    fs.write_bytes(uri, text.encode("utf-8"), s3)


def find_baseline(history: list[dict], baseline: str, run_id: str | None, dataset: str, layout: str,
                  history_uri: str) -> dict | None:
    """The record `--baseline` names; for last-good, the latest passed run of the same dataset and layout
    (None if there is none yet: the first scheduled run has nothing to compare with)."""
    if baseline == LAST_GOOD:
        candidates = [r for r in history if r.get("status") == "passed" and r["run_id"] != run_id
                      and r.get("dataset") == dataset and r.get("layout") == layout
                      and r.get("miou") is not None]
        return candidates[-1] if candidates else None
    for record in history:
        if record["run_id"] == baseline:
            if record.get("miou") is None:
                raise ConfigError(f"--baseline {baseline}: that run in {history_uri} has no mIoU (a predict "
                                  "run?). Name a scoring run.")
            return record
    known = ", ".join(r["run_id"] for r in history[-5:]) or "none yet"
    raise ConfigError(f"--baseline {baseline} is not in {history_uri} (latest runs: {known}). Pass one of "
                      f"its run ids, or {LAST_GOOD}.")


def evaluate_gate(record: dict[str, Any], baseline: dict[str, Any], max_drop: float, mode: str = "plain",
                  drop: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare a run with its baseline: it fails when mIoU fell by more than `max_drop` (absolute, 0..1).

    With `mode` "significant" and the paired interval of the drop (`drop`: estimate, low, high), it fails only
    when the interval's low end is above `max_drop`; without `drop` it falls back to the plain threshold.
    `dropped_classes` lists every class whose IoU is lower than in the baseline, largest drop first (classes
    without an IoU on either side are not comparable and left out).
    """
    miou, baseline_miou = record.get("miou"), baseline["miou"]
    if mode == "significant" and drop is not None:
        passed = miou is not None and round(drop["low"], 12) <= max_drop
    else:
        mode = "plain"
        passed = miou is not None and round(baseline_miou - miou, 12) <= max_drop
    dropped = []
    current = record.get("per_class_iou") or {}
    for name, before in (baseline.get("per_class_iou") or {}).items():
        after = current.get(name)
        if before is not None and after is not None and round(before - after, 12) > 0:
            dropped.append({"class": name, "baseline_iou": before, "iou": after, "drop": before - after})
    dropped.sort(key=lambda d: -d["drop"])
    return {"baseline_run_id": baseline["run_id"], "baseline_miou": baseline_miou, "max_drop": max_drop,
            "passed": passed, "dropped_classes": dropped, "mode": mode, "drop_interval": drop}


def gate_report(gate: dict[str, Any], record: dict[str, Any], history_uri: str) -> str:
    """The failure message: how far mIoU fell, which classes dropped, where to look, how to move on."""
    miou = record.get("miou")
    fell = "produced no mIoU" if miou is None else (
        f"mIoU {miou:.4f} is {gate['baseline_miou'] - miou:.4f} below")
    classes = ("; ".join(f"{d['class']} {d['baseline_iou']:.4f} -> {d['iou']:.4f} (-{d['drop']:.4f})"
                         for d in gate["dropped_classes"])
               or "none individually (the set of classes present changed)")
    drop = gate.get("drop_interval")
    judged = (f" (paired {100 * drop['confidence']:g}% interval of the drop [{drop['low']:.4f}, "
              f"{drop['high']:.4f}] lies wholly above it: --gate significant)"
              if drop and gate.get("mode") == "significant" else "")
    return (f"Regression gate failed for run {record['run_id']}: {fell} baseline run "
            f"{gate['baseline_run_id']} ({gate['baseline_miou']:.4f}), more than --max-drop "
            f"{gate['max_drop']}{judged}. Classes that dropped: {classes}. Metrics: {record['metrics_uri']}; "
            f"history: {history_uri}. If the change is intended, later runs can gate against this one with "
            f"--baseline {record['run_id']}.")


def history_record(config: RunConfig, metrics: dict[str, Any], output: str, metrics_uri: str, started_at: str,
                   status: str, gate: dict[str, Any] | None) -> dict[str, Any]:
    """One history line, in the documented field order."""
    model = metrics.get("model", {})
    dataset = metrics.get("dataset", {})
    interval = ((metrics.get("intervals") or {}).get("scores") or {}).get("miou") or {}
    return {
        "run_id": config.tracking.run_id, "started_at": started_at, "finished_at": _iso(_utc_now()),
        "status": status,
        "model": model.get("name"), "checkpoint": fs.normalize(config.model.checkpoint),
        "checkpoint_sha256": model.get("checkpoint_sha256"), "dataset": dataset.get("uri", config.data.input),
        "layout": dataset.get("layout", config.data.layout), "miou": metrics.get("miou"),
        "miou_all_classes": metrics.get("miou_all_classes"),
        "per_class_iou": metrics.get("per_class_iou") or {},
        "images_per_second": metrics.get("timings", {}).get("images_per_second"),
        "num_images": metrics.get("num_images"), "num_errors": metrics.get("num_errors"), "output": output,
        "metrics_uri": metrics_uri, "gate": gate,
        "miou_interval": ([interval["low"], interval["high"]]
                          if interval.get("low") is not None and interval.get("high") is not None else None),
    }


def paired_drop(config: RunConfig, baseline: dict[str, Any], output: str) -> tuple[dict[str, Any] | None,
                                                                                  str | None]:
    """The paired interval of the mIoU drop from the baseline run to the run in `output`, or (None, why not).

    None without a reason when intervals are off (--bootstrap 0).
    """
    from pipeline.intervals import bootstrap_settings, miou_drop, read_scored_run

    settings = bootstrap_settings(config.output)
    if settings is None:
        return None, None
    if not baseline.get("output"):  # a line written by hand, or by a version before outputs were recorded
        return None, (f"the history line of baseline {baseline.get('run_id')} names no output folder to "
                      "pair with")
    try:
        return miou_drop(read_scored_run(baseline["output"], config.s3), read_scored_run(output, config.s3),
                         settings, config.output.bootstrap_group), None
    except PipelineError as err:
        logger.warning("No paired interval of the mIoU drop from baseline %s: %s", baseline["run_id"], err)
        return None, str(err)


def _gate(config: RunConfig, metrics: dict[str, Any], baseline: dict[str, Any] | None,
          output: str) -> dict[str, Any] | None:
    if baseline is None:
        return None
    tracking = config.tracking
    drop, unavailable = paired_drop(config, baseline, output)
    gate = evaluate_gate(metrics, baseline, tracking.max_drop, tracking.gate, drop)
    if tracking.gate == "significant" and drop is None:
        gate["significant_unavailable"] = unavailable or "no intervals (--bootstrap 0)"
    return gate


def run_tracked(config: RunConfig, runner: Runner) -> RunResult:
    """Run under `<output>/<run id>/` with `runner`, apply the --baseline gate, and record it in --history.

    The baseline is looked up before anything runs, so a wrong run id fails fast. Raises RegressionGateFailed
    (after recording the run as failed) when the gate fails, and re-raises RunFailed from --max-errors after
    recording it; a run that crashed leaves no history line.
    """
    config = with_run_id(config)
    tracking = config.tracking
    s3 = config.s3
    output = run_output(config)
    started_at = _iso(_utc_now())
    history = read_history(tracking.history, s3) if tracking.history else []
    baseline = None
    if tracking.baseline and tracking.history:
        dataset = fs.normalize(config.data.input)
        baseline = find_baseline(history, tracking.baseline, tracking.run_id, dataset, config.data.layout,
                                 tracking.history)
        if baseline is None:
            logger.warning("--baseline %s: %s has no passed run of %s (%s layout) yet, so this run is not "
                           "gated.",
                           LAST_GOOD, tracking.history, dataset, config.data.layout)
    try:
        result = runner(config.replace(output=output))
    except RunFailed as err:
        if tracking.history and err.result is not None:
            gate = _gate(config, err.result.metrics, baseline, err.result.output)
            append_history(tracking.history, history_record(config, err.result.metrics, output,
                                                            err.result.metrics_uri, started_at, "failed",
                                                            gate), s3)
        raise
    gate = _gate(config, result.metrics, baseline, result.output)
    record = history_record(config, result.metrics, output, result.metrics_uri, started_at,
                            "failed" if gate and not gate["passed"] else "passed", gate)
    if tracking.history:
        append_history(tracking.history, record, s3)
    result = dataclasses.replace(result, metrics={**result.metrics, "run_id": tracking.run_id, "gate": gate})
    if gate and not gate["passed"]:
        raise RegressionGateFailed(gate_report(gate, record, tracking.history or "(none)"), result, gate)
    return result
