"""Intervals of a finished run's scores, and paired differences of two runs, from their per-image matrices.

The glue between a run's output folder and `pipeline.metrics.bootstrap` / `pipeline.metrics.compare`: which
files hold the per-image matrices (`_run/images/<part>.parquet`, written by every scoring run whatever
--format says), which summed matrix they must add up to (metrics.json's), and how the bootstrap settings of
the configuration (`--bootstrap`, `--bootstrap-group`, `--bootstrap-seed`) become `BootstrapSettings` and
groups. Used by `score` (after the run, on the driver), `compare` and the `--gate significant` of the run
history. Imports neither Ray nor torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import OutputConfig
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.commits import PartRecord
from pipeline.io.image_stats import RunImages, read_image_files, read_run_images
from pipeline.io.outputs import IMAGE_STATS, METRICS
from pipeline.metrics.bootstrap import BootstrapSettings, bootstrap_scores, groups_from_ids
from pipeline.metrics.compare import Comparison, compare_runs

INTERVALS_KEY = "intervals"
"""metrics.json key of the intervals (`BootstrapResult.to_dict()` plus `group_regex`); null when off."""


def bootstrap_settings(output: OutputConfig) -> BootstrapSettings | None:
    """The resampling settings of a run's configuration; None when intervals are off (--bootstrap 0)."""
    if output.bootstrap == 0:
        return None
    return BootstrapSettings(resamples=output.bootstrap, seed=output.bootstrap_seed)


def _groups(ids: np.ndarray, pattern: str | None) -> np.ndarray | None:
    return None if pattern is None else groups_from_ids(ids.tolist(), pattern)


def score_intervals(output: str, parts: Sequence[PartRecord], matrix: np.ndarray, class_names: Sequence[str],
                    settings: OutputConfig, s3: fs.S3Options | None = None) -> dict[str, Any] | None:
    """metrics.json's `intervals` for a finished run: all its committed parts (a resumed run's too).

    Args:
        output: the run's output folder.
        parts: every committed part's record; their `_run/images` files are read, nothing else is listed.
        matrix: the run's summed (C, C) matrix, which the per-image matrices must add up to.
        class_names: C names.
        settings: the output section (resamples, group regex, seed).
        s3: S3 options.

    Returns:
        None when intervals are off or no image was scored, else the intervals as JSON.
    """
    bootstrap = bootstrap_settings(settings)
    if bootstrap is None or not int(np.asarray(matrix).sum()):
        return None
    files = sorted(fs.join(output, name) for part in parts for name in part.files
                   if name.startswith(IMAGE_STATS + "/"))
    run = read_image_files(files, s3, num_classes=len(class_names), expected_total=np.asarray(matrix))
    groups = _groups(run.images.ids, settings.bootstrap_group)
    result = bootstrap_scores(run.images, bootstrap, groups, tuple(class_names))
    return {**result.to_dict(), "group_regex": settings.bootstrap_group}


@dataclass(frozen=True)
class ScoredRun:
    """A finished scoring run as a comparison reads it: where it is, its metrics.json and per-image stats."""

    output: str
    metrics: dict[str, Any]
    images: RunImages


def read_scored_run(output: str, s3: fs.S3Options | None = None) -> ScoredRun:
    """metrics.json and the per-image matrices (`_run/images`, columns `id` and `confusion` only) of a run.

    Raises:
        ConfigError: `output` is not the folder of a finished `score` run.
        InputError: its per-image matrices are missing or do not add up to its metrics.
    """
    output = fs.normalize(output)
    if fs.basename(output) == METRICS:
        output = output[: -len(METRICS) - 1]
    uri = fs.join(output, METRICS)
    if not fs.storage_for(uri, s3).exists(uri):
        raise ConfigError(f"No {METRICS} in {output}: give the output folder of a finished `unet-pipeline "
                          "score` run (what --output or <output>/<run id> was).")
    metrics = json.loads(fs.read_bytes(uri, s3))
    if metrics.get("command") != "score" or "confusion_matrix" not in metrics:
        raise ConfigError(f"{uri} is not the metrics of a `score` run: only scored runs can be compared.")
    total = np.asarray(metrics["confusion_matrix"], np.int64)
    images = read_run_images(output, s3, folder=IMAGE_STATS, num_classes=total.shape[0], expected_total=total)
    return ScoredRun(output, metrics, images)


def compare_scored(a: ScoredRun, b: ScoredRun, settings: BootstrapSettings, group: str | None = None,
                   top_images: int = 20) -> Comparison:
    """Paired bootstrap of B - A (A the baseline); refuses runs over different ids or classes."""
    names_a, names_b = a.metrics["class_names"], b.metrics["class_names"]
    if names_a != names_b:
        raise ConfigError(f"Run A ({a.output}) has classes {names_a} and run B ({b.output}) {names_b}: only "
                          "runs with the same classes can be compared.")
    groups = _groups(a.images.images.ids, group) if group is not None else None
    return compare_runs(a.images.images, b.images.images, settings, groups, names_a, top_images)


def miou_drop(baseline: ScoredRun, current: ScoredRun, settings: BootstrapSettings,
              group: str | None = None) -> dict[str, Any]:
    """The mIoU drop (baseline - current) with its paired interval, as the gate records it."""
    change = compare_scored(baseline, current, settings, group, top_images=0).scores["miou"].difference
    return {"estimate": 0.0 - change.estimate, "low": 0.0 - change.high, "high": 0.0 - change.low,
            "confidence": settings.confidence, "resamples": settings.resamples, "seed": settings.seed,
            "group_regex": group}
