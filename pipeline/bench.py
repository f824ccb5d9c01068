"""`unet-pipeline bench`: the pipeline against a bare in-process loop, and its memory at 1x and 4x the images.

Three measurements, all in one process run so their ratios compare like with like; every speed is the
median of `repeats` (default 3) timed repeats, and the report names the CPU and its features
(`pipeline.cpu_features`):

1. Bare loop: decode, preprocess, forward, post-process (arg-max) one batch at a time in this process, with
   the same backend, batch size and total threads as the pipeline - the way the upstream eval scripts work. It
   runs before Ray starts, so it has the machine to itself; so do the `--compare` rows, for the same reason
   (the pipeline's idle Ray processes cost a loop sharing the cores 20-40%).
2. Pipeline: the same images through `pipeline.run.run` (read, preprocess tasks, actor pool, score, write
   Parquet). Its images/s counts the whole Ray Data pass (actor start-up and writing included); Ray's own
   start-up is not counted, nor is a first small warm-up pass that starts the worker processes (both are
   reported separately). A second series keeps the actors between runs (`pipeline.pool.keep_pool`, as in a
   process serving several runs): it shows what the actors' start-up costs the first series.
3. Memory (separate passes, so that sampling costs no timed CPU): the pipeline's peak memory (proportional set
   size summed over this process and every process it
   started - Ray's raylet, object store and workers) at N and at 4N images. A streaming pass holds a bounded
   window of blocks, so the two peaks should be close.

`--compare torch:fp32,onnx:int8` adds bare-loop rows for other backends/precisions with their mIoU and speed
relative to the first.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.backends import create_backend
from pipeline.backends.variants import BackendVariant
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.io.images import open_image
from pipeline.io.manifest import plan_shards
from pipeline.io.rows import failed
from pipeline.io.source import read_shard
from pipeline.metrics import ConfusionAccumulator
from pipeline.prepare import PreparedRun, prepare_run, prepared_backend_spec

REPEATS = 3  # timed repeats per figure; each figure is their median
GEMM_SIZE = 2048  # the matrices of the machine's sgemm figure: large enough for its peak on 2-64 threads


class MemorySampler:
    """Peak proportional set size (PSS, Linux) of this process and all its descendants, sampled in a thread.

    PSS shares each shared page (Ray's object store) among the processes that map it, so the sum is the real
    footprint; where PSS is unavailable, RSS is used (which over-counts shared pages).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def current_bytes() -> int:
        import psutil

        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                info = process.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.current_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class LoopResult:
    """A bare loop's result: `seconds` is the median of the repeats' `all_seconds`."""

    variant: str
    images: int
    seconds: float
    miou: float | None
    masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    all_seconds: tuple[float, ...] = ()
    gflop_per_image: float | None = None  # the network's forward pass, 2 FLOPs per multiply-accumulate

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def gflops(self) -> float | None:
        """The forward passes' arithmetic throughput (GFLOP/s), None when the model's FLOPs are unknown."""
        return None if self.gflop_per_image is None else self.gflop_per_image * self.images_per_second


def gemm_gflops(threads: int, size: int = GEMM_SIZE, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply throughput with `threads` threads (torch's sgemm on two
    `size` x `size` matrices, the median of `repeats`): the ceiling a convolution network's forward pass
    approaches, against which `bench` sets each backend's GFLOP/s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / statistics.median(times) / 1e9


def _gflop_per_image(run: PreparedRun, shapes: dict[tuple[int, int, int], int]) -> float | None:
    """The mean forward-pass GFLOP of the images, from the network input shapes seen (`2mac` convention of
    `pipeline.models.figures`); None for a model the counter cannot run."""
    from pipeline.models.figures import model_figures

    try:
        total = sum(count * model_figures(run.loaded.family.name, shape, convention="2mac",
                                          **run.loaded.config)["gflops"]
                    for shape, count in shapes.items())
    except Exception:  # FLOPs are a figure of the report, never a reason for bench to fail
        return None
    return total / max(sum(shapes.values()), 1)


def _threads(config: RunConfig) -> int:
    """The bare loop's intra-op threads: every CPU this process may use (the pipeline's actors' total)."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def bare_loop(config: RunConfig, variant: BackendVariant, threads: int, warmup: int = 2, repeats: int = 1,
              ) -> LoopResult:
    """Decode, preprocess, forward and post-process the run's images in this process, `repeats` times with one
    backend; returns the median time (masks and mIoU of the first repeat: every repeat computes the same)."""
    run = prepare_run(config)
    config = run.config
    processing = run.processing
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as scratch:
        shards = plan_shards(run.layout, config.data.input, run.data, scratch, config.execution.shard_size,
                             run.s3, expect_labels=config.scoring, limit=config.data.limit)
        rows = [row for ref in shards
                for table in read_shard(ref, run.layout, run.data, config.scoring, run.s3, frozenset(),
                                        config.execution.shard_size)
                for row in table.to_pylist() if not failed(row["error"])]
        spec = prepared_backend_spec(run, shards, threads=threads, name=variant.backend,
                                     precision=variant.precision, options=dict(variant.options))
    backend = create_backend(spec, processing.to_network_input, run.s3)  # closed below, whatever happens
    scores = ConfusionAccumulator(run.num_classes)
    masks: dict[str, np.ndarray] = {}
    max_pixels = config.data.max_pixels

    keep_masks = [True]
    shapes: dict[tuple[int, int, int], int] = {}  # network input (c, h, w) -> images, for the FLOPs

    def run_batch(batch: list[tuple[dict, Any]], keep: bool) -> None:
        outputs = backend.run(np.stack([prepared.image for _, prepared in batch]))
        for (row, prepared), output in zip(batch, outputs, strict=True):
            mask = processing.finish(output, prepared.meta)
            if not keep or not keep_masks[0]:
                continue
            height, width, channels = (int(n) for n in prepared.image.shape)  # (h, w, c) uint8
            shapes[(channels, height, width)] = shapes.get((channels, height, width), 0) + 1
            masks[row["id"]] = mask
            if run.label_rule is not None:
                label = run.label_rule(open_image(row["label"], max_pixels=max_pixels))
                scores.update(processing.prepare_label(label, prepared.meta), mask)

    def prepare(row: dict) -> tuple[dict, Any]:
        return row, processing.prepare(open_image(row["image"], max_pixels=max_pixels))

    def timed_pass() -> float:
        started = time.perf_counter()
        batch: list[tuple[dict, Any]] = []
        for row in rows:
            # consecutive images of one network shape share a forward call, as in the inference actor
            item = prepare(row)
            if batch and (item[1].image.shape != batch[0][1].image.shape
                          or len(batch) >= config.execution.batch_size):
                run_batch(batch, keep=True)
                batch = []
            batch.append(item)
        if batch:
            run_batch(batch, keep=True)
        return time.perf_counter() - started

    try:
        for row in rows[:warmup]:
            run_batch([prepare(row)], keep=False)
        times = [timed_pass()]
        keep_masks[0] = False  # later repeats only time
        times += [timed_pass() for _ in range(repeats - 1)]
    finally:
        backend.close()
    miou = scores.compute().miou if run.label_rule is not None else None
    label = variant.label if spec.name == variant.backend else f"{variant.label} ({spec.name})"
    return LoopResult(label, len(masks), statistics.median(times), miou, masks, tuple(times),
                      _gflop_per_image(run, shapes))


def pipeline_pass(config: RunConfig, output: str, sample_memory: bool = False) -> tuple[dict[str, Any], int]:
    """One pipeline run; returns (its metrics, peak memory in bytes, or 0 when not sampled).

    Speed and memory are measured in separate passes: reading every process's PSS costs CPU that the timed
    pass must not lose.
    """
    from pipeline.run import run

    if not sample_memory:
        return run(config.replace(output=output, resume=False, report=False)).metrics, 0
    with MemorySampler() as sampler:
        result = run(config.replace(output=output, resume=False, report=False))
    return result.metrics, sampler.peak_bytes


def _ray_running() -> bool:
    import sys

    return "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())


def compare_rows(config: RunConfig, variants: list[BackendVariant], threads: int, repeats: int,
                 gemm: float | None = None) -> list[dict[str, Any]]:
    """Bare-loop rows for `variants`: speed (median of `repeats`), mIoU, pixels differing from the first."""
    rows = []
    reference: LoopResult | None = None
    for variant in variants:
        result = bare_loop(config, variant, threads, repeats=repeats)
        reference = reference or result
        differing = sum(int((result.masks[k] != reference.masks[k]).sum()) for k in reference.masks)
        pixels = sum(m.size for m in reference.masks.values())
        rows.append({
            "variant": result.variant, "images_per_second": round(result.images_per_second, 3),
            "images_per_second_repeats": [round(result.images / s, 3) for s in result.all_seconds],
            "speedup_vs_first": round(result.images_per_second / reference.images_per_second, 3),
            "miou": result.miou,
            "miou_change_vs_first": None if result.miou is None or reference.miou is None
            else round(result.miou - reference.miou, 5),
            "pixels_differing_from_first": differing, "pixels_total": pixels,
            **_throughput(result, gemm),
        })
    return rows


def _throughput(result: LoopResult, gemm: float | None) -> dict[str, float | None]:
    """A loop's GFLOP/s and its fraction of the machine's sgemm GFLOP/s."""
    gflops = result.gflops
    return {"gflops": None if gflops is None else round(gflops, 1),
            "fraction_of_gemm": None if gflops is None or not gemm else round(gflops / gemm, 3)}


def bench(config: RunConfig, *, images: int, compare: list[BackendVariant], memory_check: bool = True,
          repeats: int = REPEATS) -> dict[str, Any]:
    """Run the three measurements and return a JSON-ready report (keys: README, "Benchmarks")."""
    from pipeline.cpu_features import detect
    from pipeline.pool import keep_pool
    from pipeline.ray_env import ensure_ray

    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}.")
    threads = _threads(config)
    first = config.replace(limit=images)
    main_variant = BackendVariant(config.backend.name, config.backend.precision, dict(config.backend.options))
    ray_during_loops = _ray_running()
    # Bare loops before Ray starts: nothing else runs on the machine.
    gemm = gemm_gflops(threads)
    loop = bare_loop(first, main_variant, threads, repeats=repeats)
    rows = compare_rows(first, compare, threads, repeats, gemm) if compare else []
    started = time.perf_counter()
    ensure_ray(config.execution.ray_address, verbose=config.execution.verbose)
    ray_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="unet-bench-out-") as scratch:
        # The first pass of a process starts Ray's worker processes and imports torch in them; measured apart,
        # as the bare loop's warm-up images are.
        warm_started = time.perf_counter()
        pipeline_pass(config.replace(limit=min(images, 16)), f"{scratch}/warmup")
        cold_start_seconds = time.perf_counter() - warm_started
        passes = [pipeline_pass(first, f"{scratch}/timed-{i}")[0] for i in range(repeats)]
        speeds = [m["timings"]["images_per_second"] or 0.0 for m in passes]
        metrics = passes[speeds.index(statistics.median_low(speeds))]
        with keep_pool():  # a process serving several runs (a notebook, `table`): the actors stay up
            pipeline_pass(config.replace(limit=min(images, 16)), f"{scratch}/kept-warmup")
            kept = [pipeline_pass(first, f"{scratch}/kept-{i}")[0]["timings"]["images_per_second"] or 0.0
                    for i in range(repeats)]
        report: dict[str, Any] = {
            "model": metrics["model"]["name"], "checkpoint": config.model.checkpoint,
            "dataset": config.data.input,
            "backend": loop.variant, "pipeline_backend": metrics["backend"]["name"],
            "batch_size": config.execution.batch_size,
            "threads_total": threads,
            "cpu": detect().to_json(), "repeats": repeats, "ray_running_during_bare_loops": ray_during_loops,
            "pipeline_actors": metrics["backend"]["actors"],
            "pipeline_threads_per_actor": metrics["backend"]["threads_per_actor"],
            "ray_start_seconds": round(ray_seconds, 2),
            "pipeline_warmup_seconds": round(cold_start_seconds, 2),
            "images": loop.images,
            "bare_loop_images_per_second": round(loop.images_per_second, 3),
            "bare_loop_images_per_second_repeats": [round(loop.images / s, 3) for s in loop.all_seconds],
            "pipeline_images_per_second": metrics["timings"]["images_per_second"],
            "pipeline_images_per_second_repeats": speeds,
            "pipeline_seconds": metrics["timings"]["pipeline_seconds"],
            "pipeline_kept_actors_images_per_second": statistics.median(kept),
            "pipeline_kept_actors_images_per_second_repeats": kept,
            "pipeline_first_commit_seconds": metrics["streaming"].get("first_commit_seconds"),
            "bare_loop_seconds": round(loop.seconds, 3),
            "gemm_gflops": round(gemm, 1), "gflop_per_image": loop.gflop_per_image,
            **{f"bare_loop_{key}": value for key, value in _throughput(loop, gemm).items()},
        }
        report["ratio_pipeline_to_bare_loop"] = round(
            report["pipeline_images_per_second"] / report["bare_loop_images_per_second"], 3)
        report["ratio_kept_actors_to_bare_loop"] = round(
            report["pipeline_kept_actors_images_per_second"] / report["bare_loop_images_per_second"], 3)
        report["miou_bare_loop"] = loop.miou
        report["miou_pipeline"] = metrics.get("miou")
        if memory_check:
            _, peak_1x = pipeline_pass(first, f"{scratch}/1x", sample_memory=True)
            metrics_4x, peak_4x = pipeline_pass(config.replace(limit=4 * images), f"{scratch}/4x",
                                                sample_memory=True)
            report["peak_memory_mb_1x"] = round(peak_1x / 2**20, 1)
            report["images_4x"] = metrics_4x["num_images"]
            report["peak_memory_mb_4x"] = round(peak_4x / 2**20, 1)
            report["memory_ratio_4x_to_1x"] = round(peak_4x / peak_1x, 3)
            report["pipeline_images_per_second_4x"] = metrics_4x["timings"]["images_per_second"]
    if rows:
        report["compare"] = rows
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines `bench` prints."""
    from pipeline.cpu_features import CpuFeatures

    lines = [
        CpuFeatures.from_json(report["cpu"]).describe(),
        f"every speed: the median of {report['repeats']} repeats; bare loops and --compare rows ran "
        f"{'while Ray was running' if report['ray_running_during_bare_loops'] else 'before Ray started'}",
        f"model {report['model']} ({report['checkpoint']}), backend {report['backend']}, batch "
        f"{report['batch_size']}, {report['threads_total']} threads in all (pipeline: "
        f"{report['pipeline_actors']} actor(s) x {report['pipeline_threads_per_actor']} thread(s))",
        f"{'':28}{'images':>8}{'images/s':>11}{'mIoU':>9}",
        f"{'bare in-process loop':28}{report['images']:>8}{report['bare_loop_images_per_second']:>11.2f}"
        f"{_fmt(report['miou_bare_loop']):>9}"
        f"{_gemm_share(report)}",
        f"{'pipeline (Ray Data)':28}{report['images']:>8}{report['pipeline_images_per_second']:>11.2f}"
        f"{_fmt(report['miou_pipeline']):>9}",
        f"{'pipeline, actors kept':28}{report['images']:>8}"
        f"{report['pipeline_kept_actors_images_per_second']:>11.2f}",
        f"ratio pipeline / bare loop: {report['ratio_pipeline_to_bare_loop']:.3f} (each run starts its "
        f"actors); {report['ratio_kept_actors_to_bare_loop']:.3f} with the actors kept from an earlier run",
    ]
    if "peak_memory_mb_4x" in report:
        lines.append(f"peak memory at {report['images']} images: {report['peak_memory_mb_1x']:.0f} MB")
        lines.append(f"peak memory at {report['images_4x']} images: {report['peak_memory_mb_4x']:.0f} MB "
                     f"(ratio 4x/1x {report['memory_ratio_4x_to_1x']:.3f})")
    if report.get("compare"):
        lines.append(f"{'variant (bare loop)':32}{'images/s':>10}{'speed-up':>10}{'mIoU':>9}{'ΔmIoU':>9}"
                     f"{'px differing':>14}{'of sgemm':>10}")
        for row in report["compare"]:
            share = "" if row.get("fraction_of_gemm") is None else f"{row['fraction_of_gemm']:>10.2f}"
            lines.append(f"{row['variant']:32}{row['images_per_second']:>10.2f}{row['speedup_vs_first']:>10.2f}"
                         f"{_fmt(row['miou']):>9}{_fmt(row['miou_change_vs_first']):>9}"
                         f"{row['pixels_differing_from_first']:>14}{share}")
    return "\n".join(lines)


def _gemm_share(report: dict[str, Any]) -> str:
    """`  215 GFLOP/s, 1.19x sgemm's 181` (nothing when the model's FLOPs are unknown)."""
    if report["bare_loop_gflops"] is None:
        return ""
    return (f"  {report['bare_loop_gflops']:.0f} GFLOP/s, "
            f"{report['bare_loop_fraction_of_gemm']:.2f}x sgemm's {report['gemm_gflops']:.0f}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
