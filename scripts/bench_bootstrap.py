#!/usr/bin/env python3
"""Time the bootstrap and the paired comparison at scale (default 100k images, 21 classes, 1,000 resamples).

    .venv/bin/python scripts/bench_bootstrap.py                 # bootstrap + paired comparison
    .venv/bin/python scripts/bench_bootstrap.py --read          # also time reading Parquet parts
    .venv/bin/python scripts/bench_bootstrap.py --images 20000 --classes 150 --resamples 2000

Prints wall seconds (best of --repeat), the process CPU seconds of that pass (all threads; on a busy shared
machine the single-threaded CPU time is the better guide to the wall time on an idle one), the load average,
and the peak memory each step allocates (tracemalloc, which sees numpy's buffers), measured in a separate pass
so that tracing does not slow the timed one. BLAS threads: set OPENBLAS_NUM_THREADS (e.g. 1 or 2) to compare.
The synthetic images are 500x375 with a few classes each (VOC-like); the data's content does not change the
cost.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.metrics.bootstrap import BootstrapSettings, ImageStats, bootstrap_scores, image_stats
from pipeline.metrics.compare import compare_runs

PIXELS = 500 * 375


def synthetic_matrices(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """(n, C, C) int64: background plus 1-3 object classes per image, ~90% of each class's pixels right."""
    m = np.zeros((n, c, c), np.int64)
    rows = np.arange(n)
    share = rng.dirichlet(np.ones(4), n)
    classes = np.concatenate([np.zeros((n, 1), np.int64), rng.integers(1, c, (n, 3))], axis=1)
    for slot in range(4):
        gt = classes[:, slot]
        pixels = (share[:, slot] * PIXELS).astype(np.int64)
        wrong = rng.binomial(pixels, 0.1)
        m[rows, gt, gt] += pixels - wrong
        m[rows, gt, classes[:, (slot + 1) % 4]] += wrong
    return m


def synthetic_run(n: int, c: int, seed: int, chunk: int = 10_000) -> ImageStats:
    rng = np.random.default_rng(seed)
    stats, total = [], np.zeros((c, c), np.int64)
    for start in range(0, n, chunk):
        m = synthetic_matrices(rng, min(chunk, n - start), c)
        stats.append(image_stats(m))
        total += m.sum(0)
    ids = np.array([f"img_{i:07d}" for i in range(n)], dtype=object)
    return ImageStats(ids, np.concatenate(stats), total)


def measure(label: str, fn, repeat: int) -> None:
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    best = int(np.argmin(times))
    print(f"{label:<30} {times[best]:6.2f} s wall, {cpu[best]:5.2f} s CPU (best of {repeat}; walls: "
          f"{', '.join(f'{t:.2f}' for t in times)}; load {os.getloadavg()[0]:.1f})   peak allocated "
          f"{peak / 2**20:6.1f} MiB")


def write_parts(images_matrices, folder: Path, rows_per_part: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, matrices = images_matrices
    (folder / "masks").mkdir(parents=True)
    c2 = matrices.shape[1] * matrices.shape[2]
    for k, start in enumerate(range(0, len(ids), rows_per_part)):
        chunk = matrices[start:start + rows_per_part].reshape(-1)
        n = len(chunk) // c2
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * c2)
        table = pa.table({"id": pa.array(ids[start:start + n], pa.string()),
                          "mask_png": pa.array([b"\0" * 64] * n, pa.binary()),
                          "confusion": pa.ListArray.from_arrays(offsets, pa.array(chunk, pa.int64()))})
        pq.write_table(table, folder / "masks" / f"part-{k:06d}-000001.parquet", compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--read", action="store_true", help="also time reading per-image data from Parquet")
    parser.add_argument("--rows-per-part", type=int, default=1000)
    args = parser.parse_args()

    print(f"{args.images} images x {args.classes} classes x {args.resamples} resamples; {os.cpu_count()} "
          f"CPUs; numpy {np.__version__}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    start = time.perf_counter()
    a = synthetic_run(args.images, args.classes, seed=0)
    b = synthetic_run(args.images, args.classes, seed=1)
    print(f"{'synthetic data':<30} {time.perf_counter() - start:7.2f} s   per-image stats "
          f"{a.stats.nbytes / 2**20:.1f} MiB per run")
    settings = BootstrapSettings(resamples=args.resamples)
    result = bootstrap_scores(a, settings)
    miou = result.scores["miou"]
    print(f"mIoU {miou.estimate:.4f} [{miou.low:.4f}, {miou.high:.4f}]")
    measure("bootstrap (one run)", lambda: bootstrap_scores(a, settings), args.repeat)
    measure("paired comparison (two runs)", lambda: compare_runs(a, b, settings), args.repeat)

    if args.read:
        from pipeline.io.image_stats import read_run_images

        rng = np.random.default_rng(0)
        ids = [f"img_{i:07d}" for i in range(args.images)]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            matrices = synthetic_matrices(rng, args.images, args.classes)
            write_parts((ids, matrices), Path(tmp), args.rows_per_part)
            size = sum(p.stat().st_size for p in (Path(tmp) / "masks").iterdir())
            print(f"{'write synthetic parts':<30} {time.perf_counter() - start:7.2f} s   "
                  f"{size / 2**20:.1f} MiB on disk ({size / args.images:.0f} bytes/image, 64-byte masks)")
            measure("read per-image data (local)", lambda: read_run_images(tmp), args.repeat)
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
