"""One scoring or prediction run, end to end, in a single streaming Ray Data pass.

    shards (manifest) -> read bytes (tasks) -> decode + preprocess (tasks) -> infer + post-process (actor
    pool)
        -> score + encode + write + commit (sink tasks) -> merged part records -> metrics.json

Inference runs once per image: the dataset is consumed exactly once, by the sink, and metrics come only from
the commit records the sink's parts return (never from re-reading or re-running anything). This module
composes the steps; each lives in its own module: `prepare` (model, processing, layout, backend spec),
`io.manifest` (listing), `resume` (the commit/resume protocol), `actor_plan`, `stages` (per-batch work),
`io.sink`, `results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import resume
from pipeline.actor_plan import ActorPlan, plan_actors
from pipeline.backends import BACKENDS, BackendSpec
from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord, committed_parts
from pipeline.io.manifest import ShardRef, plan_shards
from pipeline.io.outputs import ERRORS, metrics_name
from pipeline.prepare import PreparedRun, prepare_run, prepared_backend_spec
from pipeline.results import RunFailed, RunResult, check_error_limit, run_metrics

# A batch whose actor dies (killed, out of memory, a crashing native library) is re-run on a restarted actor
# up to this many times; Ray's default is forever, which would loop on an input that crashes the process every
# time.
INFERENCE_TASK_RETRIES = 3

logger = logging.getLogger(__name__)

ProgressWatch = Callable[[str, list[ShardRef], fs.S3Options | None], contextlib.AbstractContextManager[Any]]
"""`watch(output, shards, s3)`: a context manager held during the run (the Ray jobs log progress with it)."""


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


def run(config: RunConfig, watch: ProgressWatch | None = None) -> RunResult:
    """Run one job (score or predict) into `config.output`, and return its metrics.

    Raises RunFailed (carrying the result) when it broke --max-errors, after writing its outputs and metrics.
    Tracked runs (run ids, history, regression gate) go through `pipeline.history.run_tracked`.
    """
    from pipeline.ray_env import ensure_ray

    started = time.perf_counter()
    check_no_overlap(fs.normalize(config.data.input), fs.normalize(config.output.uri))
    prepared = prepare_run(config)
    config, s3 = prepared.config, prepared.s3
    output = config.output.uri
    entry = BACKENDS.get(config.backend.name)
    entry.check(config.backend, None)  # before a Ray starts: e.g. the VACC SDK is missing

    if not config.execution.resume:
        resume.clear_outputs(output, s3)
    listing_started = time.perf_counter()
    shards = plan_shards(prepared.layout, config.data.input, prepared.data, output,
                         config.execution.shard_size, s3,
                         reuse=config.execution.resume, expect_labels=config.scoring, limit=config.data.limit)
    listing_seconds = time.perf_counter() - listing_started
    resume.check_resume_settings(config, prepared.loaded.checkpoint.sha256, s3)
    previous = committed_parts(output, s3) if config.execution.resume else []
    done = resume.done_rows(previous, output)

    ensure_ray(config.execution.ray_address, progress=config.execution.progress)
    plan = _plan(prepared)
    spec = prepared_backend_spec(prepared, shards, threads=plan.threads)
    pipeline_started = time.perf_counter()
    new_parts, plan = _execute(prepared, shards, done, plan, spec, watch)
    pipeline_seconds = time.perf_counter() - pipeline_started
    return _finish(prepared, shards, previous, new_parts, plan, {
        "listing_seconds": listing_seconds, "pipeline_seconds": pipeline_seconds,
        "wall_seconds": time.perf_counter() - started})


def _plan(prepared: PreparedRun, max_useful: int | None = None) -> ActorPlan:
    import ray

    config = prepared.config
    entry = BACKENDS.get(config.backend.name)
    cluster = ray.cluster_resources()
    entry.check(config.backend, cluster)
    return plan_actors(config.execution, config.backend, entry, cluster, max_useful)


def _execute(prepared: PreparedRun, shards: list[ShardRef], done: dict[int, frozenset[int]], plan: ActorPlan,
             spec: BackendSpec, watch: ProgressWatch | None) -> tuple[list[PartRecord], ActorPlan]:
    """The streaming pass over every row not yet committed; returns the records of the parts it wrote and the
    actor pool it used (never larger than the number of read tasks)."""
    import ray

    from pipeline.io.sink import MaskSink, SinkSettings
    from pipeline.io.source import ShardDatasource
    from pipeline.stages import Predictor, preprocess_batch

    config, s3 = prepared.config, prepared.s3
    execution = config.execution
    source = ShardDatasource(shards, prepared.layout, prepared.data, config.scoring, s3, done,
                             block_rows=execution.shard_size)
    pending = len(source.get_read_tasks(1))
    if not pending:
        return [], plan
    if pending < plan.actors:
        plan = dataclasses.replace(_plan(prepared, max_useful=pending),
                                   threads=plan.threads)  # spec keeps its threads
    png_file = None
    if config.output.png_values == "upstream":
        png_file = prepared.processing.upstream_png_encoder(
            prepared.loaded.checkpoint.metadata.get("mask_values"))
    sink = MaskSink(SinkSettings(config.output.uri, config.output.formats, prepared.num_classes,
                                 config.scoring,
                                 prepared.loaded.family.name, s3, png_file))
    task_cpus = execution.num_cpus_per_task
    dataset = (
        ray.data.read_datasource(source, override_num_blocks=pending, num_cpus=task_cpus)
        .map_batches(preprocess_batch, batch_size=None, batch_format="numpy", num_cpus=task_cpus,
                     fn_kwargs={"processing": prepared.processing, "label_rule": prepared.label_rule,
                                "max_pixels": prepared.data.max_pixels})
    )
    with warnings.catch_warnings():  # Ray 2.60 takes actor retry settings only through **ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = dataset.map_batches(
            Predictor, batch_size=None, batch_format="numpy",
            fn_constructor_kwargs={"spec": spec, "processing": prepared.processing, "s3": s3},
            compute=ray.data.ActorPoolStrategy(size=plan.actors), **plan.ray_resources,
            max_restarts=-1, max_task_retries=INFERENCE_TASK_RETRIES)
    try:
        with watch(config.output.uri, shards, s3) if watch else contextlib.nullcontext():
            dataset.write_datasink(sink, ray_remote_args={"num_cpus": task_cpus})
    except PipelineError:  # raised on purpose in a task (Ray's error subclasses it)
        raise  # as is: its message says what to do
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0][:500]
        raise RunFailed(
            f"The pipeline stopped before it finished ({type(err).__name__}: {first_line}). Every part "
            f"committed so far is kept in {config.output.uri}: fix the cause, then run the same command with "
            "--resume to do only the rest.") from err
    return sink.parts, plan


def _finish(prepared: PreparedRun, shards: Sequence[ShardRef], previous: list[PartRecord],
            new_parts: list[PartRecord], plan: ActorPlan, timings: dict[str, float]) -> RunResult:
    """Check, write errors.jsonl, metrics.json and the report, then apply --max-errors."""
    config, s3 = prepared.config, prepared.s3
    output = config.output.uri
    parts = previous + new_parts
    resume.check_every_input_accounted(shards, parts)
    if config.execution.resume:
        resume.remove_orphan_files(output, parts, s3)
    retry_later = sum(part.storage_failures for part in new_parts)
    if retry_later:
        logger.warning("%d inputs failed because the storage failed after its retries (stage 'storage' in "
                       "errors.jsonl): run the same command with --resume to try them again.", retry_later)
    metrics = run_metrics(config, prepared.loaded, prepared.layout.name, prepared.class_names, parts, timings,
                          prepared.num_classes)
    metrics["processing"] = {"name": prepared.processing.name, "scale": config.processing.scale,
                             "input_size": list(config.processing.input_size) if config.processing.input_size
                             else None}
    metrics["backend"] = {"name": config.backend.name, "device": config.backend.device,
                          "precision": config.backend.precision, "actors": plan.actors,
                          "threads_per_actor": plan.threads, "batch_size": config.execution.batch_size}
    errors = sorted((e for part in parts for e in part.errors), key=lambda e: (e.shard, e.row))
    fs.write_bytes(fs.join(output, ERRORS),
                   "".join(json.dumps(e.to_json()) + "\n" for e in errors).encode("utf-8"),
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
