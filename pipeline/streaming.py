"""How a run streamed: when its parts were committed, how soon after inference, and the object store's peak.

Recorded in metrics.json (`streaming`) and reported by `bench`; the figures an operator needs to trust that
results reach storage as they are made and that memory does not grow with the dataset.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.io.commits import PartRecord


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class CommitTimes:
    """The commit times of this attempt's parts (Unix seconds)."""

    started_at: float
    commits: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)

    def add(self, parts: list[PartRecord]) -> None:
        for part in parts:
            if part.committed and part.written_at:
                self.commits.append(part.written_at)
                self.lags.append(max(part.written_at - part.inferred_at, 0.0))

    def summary(self, ended_at: float, object_store_peak: int | None) -> dict[str, Any]:
        """`first_commit_seconds` (from the run's start), commit lag p50/p95 (inference end to commit), the
        share of commits in the last 10% of the run, the parts committed and the object store's peak."""
        wall = max(ended_at - self.started_at, 1e-9)
        first = min(self.commits) - self.started_at if self.commits else None
        late = sum(1 for t in self.commits if t - self.started_at > 0.9 * wall)
        return {
            "parts_committed": len(self.commits),
            "first_commit_seconds": None if first is None else round(first, 3),
            "first_commit_fraction_of_wall": None if first is None else round(first / wall, 3),
            "commit_lag_p50_seconds": _round(_quantile(self.lags, 0.5)),
            "commit_lag_p95_seconds": _round(_quantile(self.lags, 0.95)),
            "commits_in_last_10_percent": round(late / len(self.commits), 3) if self.commits else None,
            "object_store_peak_mb": None if object_store_peak is None else round(object_store_peak / 2**20,
                                                                                 1),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class ObjectStoreSampler:
    """Peak bytes in Ray's object store (the raylet's store stats), sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="object-store-sampler", daemon=True)

    def __enter__(self) -> ObjectStoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        try:
            import ray
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            state = get_state_from_address(ray.get_runtime_context().gcs_address)
        except Exception:  # a private API: no figure rather than no run
            return
        while not self._stop.is_set():
            try:
                used = int(get_memory_info_reply(state,
                                                 timeout_seconds=5).store_stats.object_store_bytes_used)
                self.peak = used if self.peak is None else max(self.peak, used)
            except Exception:
                pass
            self._stop.wait(self.interval)


def now() -> float:
    return time.time()
