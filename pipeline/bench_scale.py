"""`unet-pipeline bench --scale 4000,32000`: does the pipeline stay fast and bounded as the dataset grows?

For each size N it scores N small generated images (64x64 `pairs`, the packaged model; made once and cached,
512 distinct samples under N names) and reports wall time, images/s, the driver's peak RSS, the peak memory of
the driver and every Ray process it started (PSS summed), the object store's peak and the time to the first
committed part, then the ratios of the largest size to the smallest. The runs share one actor pool
(`pipeline.pool. keep_pool`), after a small warm-up run that starts it, so the ratios compare steady
streaming, not start-up.
"""

from __future__ import annotations

import io
import tempfile
import threading
from typing import Any

from pipeline.cache import cache_dir
from pipeline.config import RunConfig

DISTINCT = 512
SIZE = (64, 64)


def scale_dataset(count: int) -> str:
    """`count` 64x64 image/label pairs (pairs layout), written once into the cache."""
    from pipeline.demo.synthetic import make_sample

    root = cache_dir() / f"scale-64px-{count}"
    marker = root / ".complete"
    if marker.exists():
        return str(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    samples: list[tuple[bytes, bytes]] = []
    for index in range(min(count, DISTINCT)):
        picture, classes = make_sample(index, SIZE)
        samples.append((_png(picture), _png(classes)))
    for index in range(count):
        image_png, label_png = samples[index % len(samples)]
        (root / "images" / f"s{index:07d}.png").write_bytes(image_png)
        (root / "masks" / f"s{index:07d}.png").write_bytes(label_png)
    marker.write_text("ok\n")
    return str(root)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class DriverPeak:
    """Peak RSS of this process, sampled in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> DriverPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scale_bench(config: RunConfig, sizes: list[int]) -> dict[str, Any]:
    """Score each size and report the figures and the growth ratios (see the module docstring)."""
    from pipeline.bench import MemorySampler
    from pipeline.pool import keep_pool
    from pipeline.ray_env import ensure_ray
    from pipeline.run import run

    sizes = sorted(sizes)
    ensure_ray(config.execution.ray_address, verbose=config.execution.verbose)
    rows = []
    with keep_pool(), tempfile.TemporaryDirectory(prefix="unet-scale-") as scratch:
        base = config.replace(layout="pairs", shard_size=config.execution.shard_size, report=False,
                              format="parquet", resume=False, progress=False)
        run(base.replace(input=scale_dataset(sizes[0]), limit=64, output=f"{scratch}/warmup"))
        for size in sizes:
            dataset = scale_dataset(size)
            with DriverPeak() as driver, MemorySampler() as everything:
                metrics = run(base.replace(input=dataset, output=f"{scratch}/{size}")).metrics
            streaming = metrics["streaming"]
            rows.append({
                "images": metrics["num_images"], "wall_seconds": metrics["timings"]["wall_seconds"],
                "images_per_second": round(metrics["num_images"] / metrics["timings"]["wall_seconds"], 2),
                "driver_rss_mb": round(driver.peak / 2**20, 1),
                "all_processes_mb": round(everything.peak_bytes / 2**20, 1),
                "object_store_peak_mb": streaming["object_store_peak_mb"],
                "first_commit_seconds": streaming["first_commit_seconds"],
                "commit_lag_p95_seconds": streaming["commit_lag_p95_seconds"],
                "commits_in_last_10_percent": streaming["commits_in_last_10_percent"],
            })
    first, last = rows[0], rows[-1]

    def ratio(key: str) -> float | None:
        return round(last[key] / first[key], 3) if first.get(key) and last.get(key) is not None else None

    return {"sizes": sizes, "rows": rows, "ratios_largest_to_smallest": {
        key: ratio(key) for key in ("images_per_second", "driver_rss_mb", "all_processes_mb",
                                    "object_store_peak_mb")}}


def format_scale(report: dict[str, Any]) -> str:
    keys = ("images", "wall_seconds", "images_per_second", "driver_rss_mb", "all_processes_mb",
            "object_store_peak_mb", "first_commit_seconds", "commit_lag_p95_seconds",
            "commits_in_last_10_percent")
    lines = [" | ".join(keys)]
    lines += [" | ".join(str(row[k]) for k in keys) for row in report["rows"]]
    ratios = ", ".join(f"{k} {v}" for k, v in report["ratios_largest_to_smallest"].items())
    lines.append(f"largest / smallest: {ratios}")
    return "\n".join(lines)

