"""One scoring or prediction run, end to end, streaming.

    list (thread) -> shards -> read + preprocess (Ray Data tasks) -> inference pool (actors: predict, score,
        write and commit each part) -> commit records -> merged scores -> metrics.json

The steps overlap: Ray starts (main thread) while a thread loads the model; the inference actors start as soon
as Ray is up, while the driver probes or exports the model and lists the input, and build the backend when its
spec is ready; each wave of listed shards is scored while the next is
listed; each part is committed by the actor that predicted it, within milliseconds. Inference runs once per
image, and metrics come only from the commit records (never from re-reading or re-running anything).

This module composes the steps; each lives in its own module: `prepare` (model, processing, layout, backend
spec), `io.manifest` (listing), `resume` and `io.lock` (the output's protocol), `actor_plan`, `pool` (the
actors), `stages` (per-batch work), `io.parts` (writing), `results`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pipeline import cpu_features, resume
from pipeline.actor_plan import ActorPlan, plan_actors
from pipeline.backends import BACKENDS, BackendChoice, BackendSpec
from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord, committed_parts
from pipeline.io.lock import OutputLock
from pipeline.io.manifest import Listing, ShardRef
from pipeline.io.outputs import ERRORS, metrics_name
from pipeline.io.parts import PartSettings
from pipeline.pool import INFERENCE_TASK_RETRIES, pool_for, release_unless_kept, start_pool
from pipeline.prepare import PreparedRun, prepare_context, prepare_run, prepared_backend_spec, with_backend
from pipeline.progress import Progress
from pipeline.results import RunFailed, RunResult, check_error_limit, run_metrics
from pipeline.streaming import CommitTimes, ObjectStoreSampler

if TYPE_CHECKING:
    from pipeline.io.source import ReadUnit  # imports Ray Data: loaded where the reads are planned

__all__ = ["INFERENCE_TASK_RETRIES", "block_rows", "check_no_overlap", "run", "tail_rows"]

LISTING_GRACE_SECONDS = 0.5  # a listing done by then is small: the pool is sized to its read tasks
# Preprocessed blocks Ray Data may hold ahead of the actors (each also holds IN_FLIGHT_PER_ACTOR blocks):
# a few VOC-size batches, a few hundred small images.
RUN_AHEAD_BYTES_PER_ACTOR = 16 * 2**20
# Network-input pixels per block dealt to an actor (a block is also a committed part): about one batch of a
# seed-size model at 512x512 (seconds of work each), a whole shard of small images. Bigger blocks of big
# images make the first commit wait for a whole shard (VGG16 at 512, 2 cores: 32 images, 160 s) and leave one
# actor finishing a shard while the other idles.
BLOCK_PIXELS = 2_000_000
TAIL_UNIT_PIXELS = 512 * 512  # the most network-input pixels of a read task at the end of a run (`tail_rows`)
logger = logging.getLogger(__name__)


def check_no_overlap(input_uri: str, output_uri: str) -> None:
    """Refuse an output prefix equal to, inside, or containing the input (a run would read its own outputs).

    Local paths are compared after resolving symbolic links, so a link cannot hide the overlap.
    """
    a, b = (uri if fs.is_s3(uri) else os.path.realpath(uri) for uri in (input_uri, output_uri))
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise ConfigError(
            f"--output {output_uri} overlaps --input {input_uri}: a run must not write where it reads. "
            "Pick an output folder outside the input."
        )


def run(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run one job (score or predict) into `config.output`, and return its metrics.

    Raises RunFailed (carrying the result) when it broke --max-errors, after writing its outputs and metrics.
    Tracked runs (run ids, history, regression gate) go through `pipeline.history.run_tracked`.
    """
    started = time.time()
    output = fs.normalize(config.output.uri)
    check_no_overlap(fs.normalize(config.data.input), output)
    BACKENDS.get(config.backend.name).check(config.backend, None)  # before Ray starts: a missing SDK, say
    s3 = config.s3.resolved()
    _check_locations(config, output, s3)
    prepared = _prepare_beside_ray(config)  # the checkpoint is checked before anything is written
    with OutputLock(output, s3):
        try:
            return _run_locked(prepared, progress or Progress(), started)
        finally:
            release_unless_kept()  # the actors started early, should the run fail before it scores


def _check_locations(config: RunConfig, output: str, s3: fs.S3Options) -> None:
    """One-line errors, in seconds, before Ray starts: an input or checkpoint that is not there, an output
    this user cannot write, S3 that cannot work (unreachable endpoint, missing bucket, access denied). A
    mistyped path would otherwise wait for Ray's start and shutdown (~10 s) to be told."""
    fs.check_location(config.data.input, "--input", s3)
    fs.check_location(config.output.uri, "--output", s3, must_exist=False)
    resume.check_writable(output, s3)
    fs.check_location(config.model.checkpoint, "--checkpoint", s3)


def _prepare_beside_ray(config: RunConfig) -> PreparedRun:
    """Load the model (a thread) while Ray starts (the main thread, whose life Ray's daemons are tied to)."""
    from pipeline.ray_env import ensure_ray

    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as worker:
        prepared = worker.submit(prepare_run, config)
        ensure_ray(config.execution.ray_address, verbose=config.execution.verbose)
        return prepared.result()


def _run_locked(prepared: PreparedRun, progress: Progress, started: float) -> RunResult:
    config, s3 = prepared.config, prepared.s3
    output = config.output.uri
    execution = config.execution
    if not execution.resume:
        resume.clear_outputs(output, s3)
    listing = Listing(prepared.layout, config.data.input, prepared.data, output, execution.shard_size, s3,
                      reuse=execution.resume, expect_labels=config.scoring, limit=config.data.limit).start()
    _start_actors(prepared)
    cpu = cpu_features.on_actor_nodes()
    requested = config.backend.name
    choice = _choose_backend(prepared, listing, cpu)
    if choice is not None:  # `auto`: the backend it picked is what the run records and --resume compares
        prepared = with_backend(prepared, choice.name)
        config = prepared.config
    resume.check_resume_settings(config, prepared.loaded.checkpoint.sha256, s3)
    previous = committed_parts(output, s3) if execution.resume else []
    done = resume.done_rows(previous, output)
    plan = _plan(prepared, listing, done)
    if choice is not None:
        spec = dataclasses.replace(choice.spec, threads=plan.threads)
    else:
        spec = prepared_backend_spec(prepared, listing.shards(), threads=plan.threads, cpu=cpu)
    pool = pool_for(spec, prepared.processing, s3, plan)
    _limit_ray_data(plan)
    times = CommitTimes(started)
    progress.start()

    def committed(parts: list[PartRecord]) -> None:
        times.add(parts)
        progress.listed(listing.inputs, listing.done)
        progress.committed(parts)

    pipeline_started = time.perf_counter()
    try:
        with ObjectStoreSampler() as sampler:
            new_parts = pool.run(_blocks(prepared, listing, done, plan, progress), _part_settings(prepared),
                                 committed)
    except PipelineError:
        raise
    except Exception as err:
        raise RunFailed(
            f"The pipeline stopped before it finished ({_cause(err)}). Every part committed so far is kept "
            f"in {output}: fix the cause, then run the same command with --resume to do only the "
            "rest.") from err
    finally:
        progress.close()
        release_unless_kept()  # before the intervals and the report: other drivers may need the CPUs
    ended = time.time()
    timings = {"listing_seconds": listing.seconds, "listing_done_seconds": listing.finished_at - started,
               "pipeline_seconds": time.perf_counter() - pipeline_started, "wall_seconds": ended - started}
    recorded: dict[str, Any] = {"cpu": cpu.to_json()}
    if choice is not None:
        recorded.update(requested=requested, auto_reason=choice.reason)
    if "int8_weight_bits" in spec.options:
        recorded["int8_weight_bits"] = spec.options["int8_weight_bits"]
    return _finish(prepared, listing, previous, new_parts, plan, timings,
                   times.summary(ended, sampler.peak), recorded)


def _choose_backend(prepared: PreparedRun, listing: Listing, cpu: cpu_features.CpuFeatures,
                    ) -> BackendChoice | None:
    """For an entry that picks another backend (`auto`), its pick (a probe on the listed images, once per
    job)."""
    entry = BACKENDS.get(prepared.config.backend.name)
    if entry.choose is None:
        return None
    spec = BackendSpec.of_run(prepared.config, prepared.loaded.family.name, None)
    return entry.choose(spec, prepare_context(prepared, listing.shards(), cpu))


def _start_actors(prepared: PreparedRun) -> None:
    """Start the inference actors of a CPU backend now, one per CPU, so that their processes boot while the
    driver probes, exports or calibrates and lists: `_plan` later shrinks the pool to what the input can use
    (a device backend's pool waits for `_plan`, which checks the devices first)."""
    config = prepared.config
    if BACKENDS.get(config.backend.name).runs_on_cpu(config.backend):
        start_pool(prepared.processing, prepared.s3, _full_plan(prepared))


def _full_plan(prepared: PreparedRun) -> ActorPlan:
    """The actor pool the cluster allows for this backend (checked against the cluster first)."""
    import ray

    config = prepared.config
    entry = BACKENDS.get(config.backend.name)
    cluster = ray.cluster_resources()
    entry.check(config.backend, cluster)
    return plan_actors(config.execution, config.backend, entry, cluster)


def _plan(prepared: PreparedRun, listing: Listing, done: dict[int, frozenset[int]]) -> ActorPlan:
    """The actor pool: as many actors as the cluster allows, but no more than a small input has read tasks."""
    import ray

    config = prepared.config
    full = _full_plan(prepared)
    if not listing.wait(LISTING_GRACE_SECONDS):
        return full
    units = _read_units(prepared, listing.all(), done, tail_shards=2 * full.actors)
    return plan_actors(config.execution, config.backend, BACKENDS.get(config.backend.name),
                       ray.cluster_resources(), max_useful=max(len(units), 1))


def _limit_ray_data(plan: ActorPlan) -> None:
    """Ray Data plans its read/preprocess tasks within the CPUs the inference actors leave, and reads ahead of
    the actors by at most RUN_AHEAD_BYTES_PER_ACTOR per actor: without a cap it fills the object store with
    preprocessed blocks as fast as it reads, and the store's use grows with the dataset. Its scheduling loop
    pauses while it waits on the actors (`pipeline.executor_idle`) instead of spinning on a core."""
    import ray
    from ray.data import DataContext, ExecutionResources

    from pipeline import executor_idle

    executor_idle.install()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    left = max(cpus - plan.actors * plan.cpus_per_actor, 0.5)
    DataContext.get_current().execution_options.resource_limits = ExecutionResources(
        cpu=left, object_store_memory=plan.actors * RUN_AHEAD_BYTES_PER_ACTOR)


def _blocks(prepared: PreparedRun, listing: Listing, done: dict[int, frozenset[int]], plan: ActorPlan,
            progress: Progress) -> Iterator[Any]:
    """Preprocessed blocks (object refs) of every row not yet committed, wave after wave as the listing goes.

    A wave is every shard listed since the previous one; the last wave's last `2 x actors` shards are read in
    units of `tail_rows` (a batch, one image when big), so the end of the run goes to whichever actor is free.
    """
    import ray

    from pipeline.io.source import ShardDatasource
    from pipeline.stages import preprocess_batch

    config = prepared.config
    task_cpus = config.execution.num_cpus_per_task
    seen = 0
    while True:
        wave, finished = listing.new_shards(seen)
        seen += len(wave)
        progress.listed(listing.inputs, finished)
        units = _read_units(prepared, wave, done, tail_shards=2 * plan.actors if finished else 0)
        if units:
            source = ShardDatasource(units, prepared.layout, prepared.data, config.scoring, prepared.s3)
            dataset = (
                ray.data.read_datasource(source, override_num_blocks=len(units), num_cpus=task_cpus)
                .map_batches(preprocess_batch, batch_size=None, batch_format="numpy", num_cpus=task_cpus,
                             fn_kwargs={"processing": prepared.processing, "label_rule": prepared.label_rule,
                                        "max_pixels": prepared.data.max_pixels})
            )
            for bundle in dataset.iter_internal_ref_bundles():
                for entry in bundle.blocks:
                    yield entry.ref
        if finished:
            return


def _read_units(prepared: PreparedRun, shards: Sequence[ShardRef], done: dict[int, frozenset[int]],
                tail_shards: int) -> list[ReadUnit]:
    """The read tasks of `shards` (see `pipeline.io.source.read_units`): blocks of `block_rows`, the last
    `tail_shards` shards in units of `tail_rows`."""
    from pipeline.io.source import read_units

    batch_size = prepared.config.execution.batch_size
    return read_units(shards, done, tail_rows(prepared.processing, batch_size), tail_shards=tail_shards,
                      unit_rows=block_rows(prepared.processing, batch_size))


def tail_rows(processing: Any, batch_size: int) -> int:
    """Rows per read task in a run's last shards: one batch, but no more than TAIL_UNIT_PIXELS of a fixed
    network input (one image from 512x512 up), so that the last images spread over every actor: four
    images of a seed-size model at 512 are 17 s of one core's work, which the other actors would idle."""
    pixels = _network_pixels(processing)
    return batch_size if pixels is None else max(1, min(batch_size, TAIL_UNIT_PIXELS // pixels))


def block_rows(processing: Any, batch_size: int) -> int | None:
    """Rows per read task, block and committed part for a processing with a fixed network input: as many
    batches as fit in BLOCK_PIXELS, at least one; None (whole shards) for a processing whose input size
    follows the image (milesial's scale)."""
    pixels = _network_pixels(processing)
    return None if pixels is None else max(1, BLOCK_PIXELS // (pixels * batch_size)) * batch_size


def _network_pixels(processing: Any) -> int | None:
    """Pixels of the processing's fixed network input; None when the size follows each image."""
    size = getattr(processing, "input_size", None)
    return int(size[0]) * int(size[1]) if size else None


def _part_settings(prepared: PreparedRun) -> PartSettings:
    config = prepared.config
    png_file = None
    if config.output.png_values == "upstream":
        mask_values = prepared.loaded.checkpoint.metadata.get("mask_values")
        png_file = prepared.processing.upstream_png_encoder(mask_values)
    return PartSettings(config.output.uri, config.output.formats, prepared.num_classes, config.scoring,
                        prepared.loaded.family.name, prepared.s3, png_file)


def _cause(err: BaseException) -> str:
    """`Type: first line` of the exception a Ray task raised (not Ray's wrapper), e.g. `OSError: [Errno 28] No
    space left on device: '/out/masks/...'`."""
    from ray.exceptions import RayTaskError

    inner: BaseException = err
    if isinstance(err, RayTaskError) and err.cause is not None:
        inner = err.cause
    text = (str(inner).splitlines() or [""])[0][:500]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def _finish(prepared: PreparedRun, listing: Listing, previous: list[PartRecord], new_parts: list[PartRecord],
            plan: ActorPlan, timings: dict[str, float], streaming: dict[str, Any],
            choice: dict[str, Any]) -> RunResult:
    """Check, write errors.jsonl, metrics.json and the report, then apply --max-errors."""
    config, s3 = prepared.config, prepared.s3
    output = config.output.uri
    shards: Sequence[ShardRef] = listing.all()
    parts = previous + new_parts
    resume.check_every_input_accounted(shards, parts)
    if config.execution.resume:
        resume.remove_orphan_files(output, parts, s3)
    retry_later = sum(part.storage_failures for part in new_parts)
    if retry_later:
        logger.warning("%d inputs failed because the storage failed after its retries (stage 'storage' in "
                       "errors.jsonl): run the same command with --resume to try them again.", retry_later)
    metrics = run_metrics(config, prepared.loaded, prepared.layout.name, prepared.class_names, parts, timings,
                          prepared.num_classes, new_parts=new_parts,
                          ignore_index=prepared.label_rule.ignore_index if prepared.label_rule else None)
    scale, size = (getattr(prepared.processing, name, None) for name in ("scale", "input_size"))
    metrics["processing"] = {"name": prepared.processing.name, "scale": scale,  # in force, defaults included
                             "input_size": list(size) if size else None}
    metrics["backend"] = {"name": config.backend.name, "device": config.backend.device,
                          "precision": config.backend.precision, "actors": plan.actors,
                          "threads_per_actor": plan.threads, "batch_size": config.execution.batch_size,
                          **{k: v for k, v in choice.items() if k != "cpu"}}
    metrics["cpu"] = choice["cpu"]
    metrics["listing"] = {"shards": len(shards), "skipped_hidden_files": listing.skipped_hidden}
    metrics["streaming"] = streaming
    if config.scoring:
        from pipeline.intervals import INTERVALS_KEY, score_intervals

        try:  # the scores are measured: intervals that cannot be computed must not lose them
            metrics[INTERVALS_KEY] = score_intervals(output, parts, metrics["confusion_matrix"],
                                                     prepared.class_names, config.output, s3)
        except PipelineError as err:
            logger.warning("No intervals in metrics.json: %s", err)
            metrics[INTERVALS_KEY] = None
    errors = sorted((e for part in parts for e in part.errors), key=lambda e: (e.shard, e.row))
    fs.write_bytes(fs.join(output, ERRORS), "".join(json.dumps(e.to_json()) + "\n" for e in errors).encode(),
                   s3)
    metrics_uri = fs.join(output, metrics_name(config.scoring))
    fs.write_bytes(metrics_uri, json.dumps(metrics, indent=2).encode("utf-8"), s3)
    if config.scoring and config.output.report:  # before the error limit: a failed run needs its report most
        from pipeline.report.run_report import report_after_run

        report_after_run(output, metrics, s3)
    result = RunResult(metrics, output, metrics_uri)
    check_error_limit(config.execution.max_errors, metrics["num_inputs"], metrics["num_errors"],
                      metrics["errors_by_stage"], result)
    return result

