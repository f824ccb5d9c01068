"""One scoring or prediction run, end to end, in a single streaming Ray Data pass.

    shards (manifest) -> read bytes (tasks) -> decode + preprocess (tasks) -> infer + post-process (actor pool)
        -> score + encode + write (sink tasks) -> sum of confusion matrices -> metrics.json

Inference runs once per image: the dataset is consumed exactly once, by the sink, and metrics come only from the
confusion matrices the sink's parts return (never from re-reading or re-running anything).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.backends import BackendSpec, PrepareContext, prepare_backend
from pipeline.config import RunConfig
from pipeline.datasets import LAYOUTS, Layout, LayoutOptions
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.manifest import ShardRef, plan_shards
from pipeline.io.sink import MaskSink, SinkSettings, parts_dir
from pipeline.io.source import STORAGE_STAGE
from pipeline.metrics import scores_from_confusion
from pipeline.models import LoadedModel, load_model
from pipeline.processing import create_processing

# A batch whose actor dies (killed, out of memory, a crashing native library) is re-run on a restarted actor up to
# this many times; Ray's default is forever, which would loop on an input that crashes the process every time.
INFERENCE_TASK_RETRIES = 3
RESULT_SETTINGS = (  # RunConfig fields that change masks or metrics: a resumed run must keep them
    "command", "input", "layout", "model", "model_config", "processing", "scale", "input_size", "threshold", "split",
    "image_dir", "mask_dir", "mask_suffix", "image_column", "mask_column", "id_column", "label_values", "limit",
    "class_names", "format", "backend", "precision", "shard_size", "max_pixels",
)
OWN_OUTPUTS = ("_run", "masks", "png", "metrics.json", "summary.json", "errors.jsonl", "report.html", "report.md",
               "report_files")


logger = logging.getLogger(__name__)


class RunFailed(PipelineError):
    """The run finished but broke a limit (too many errors); its outputs and metrics were still written."""


@dataclass(frozen=True)
class RunResult:
    metrics: dict[str, Any]
    output: str
    metrics_uri: str

    @property
    def miou(self) -> float | None:
        return self.metrics.get("miou")


ProgressWatch = Callable[[str, list[ShardRef], fs.S3Options | None], contextlib.AbstractContextManager[Any]]
"""`watch(output, shards, s3)`: a context manager held while the pipeline runs (the Ray jobs log progress with it)."""


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


def _layout_options(config: RunConfig, loaded: LoadedModel) -> LayoutOptions:
    return LayoutOptions.of_run(config.to_dict(), loaded.checkpoint.metadata.get("mask_values"))


def _clean_previous(output: str, s3: fs.S3Options | None) -> None:
    storage = fs.storage_for(output, s3)
    for name in OWN_OUTPUTS:
        storage.delete_tree(fs.join(output, name))


def _committed_parts(output: str, s3: fs.S3Options | None) -> list[dict]:
    """The commit records of earlier attempts (one small file per part, read in parallel)."""
    storage = fs.storage_for(output, s3)
    uris = [uri for page in storage.iter_files(parts_dir(output)) for uri in page if uri.endswith(".json")]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda uri: json.loads(storage.read_bytes(uri)), uris))


def _done_rows(previous: list[dict], output: str) -> dict[int, set[int]]:
    """Shard -> rows already committed; a row committed twice would be counted twice, so it stops the run."""
    done: dict[int, set[int]] = {}
    for part in previous:
        rows = done.setdefault(part["shard"], set())
        if not rows.isdisjoint(part["rows"]):
            raise PipelineError(
                f"--resume: part {part['part']} commits rows of shard {part['shard']} that another part already "
                f"holds, so the records in {parts_dir(output)} are inconsistent. Run again without --resume.")
        rows.update(part["rows"])
    return done


def _check_resume_settings(config: RunConfig, loaded: LoadedModel, s3: fs.S3Options | None) -> None:
    """Record what decides the results (`_run/settings.json`); --resume refuses to mix in different results."""
    settings = {key: getattr(config, key) for key in RESULT_SETTINGS}
    settings["checkpoint_sha256"] = loaded.checkpoint.sha256
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    uri = fs.join(config.output, "_run", "settings.json")
    storage = fs.storage_for(uri, s3)
    if config.resume and storage.exists(uri):
        before = json.loads(storage.read_bytes(uri))
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            detail = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--resume: the run in {config.output} was made with other settings ({detail}), and its committed "
                "results would be mixed with new ones. Resume with the same settings, or drop --resume to start over.")
        return
    storage.write_bytes(uri, json.dumps(settings, indent=2).encode("utf-8"))


def _check_every_input_accounted(shards: list[ShardRef], parts: list[dict]) -> None:
    """processed + errored = inputs: every row of a listed shard must be in exactly one part.

    Container shards (parquet, webdataset) are not counted before they are read, so only listed shards are checked.
    """
    seen: Counter[int] = Counter()
    for part in parts:
        seen[part["shard"]] += len(part["rows"])
    missing = [(ref.index, ref.size - seen[ref.index]) for ref in shards
               if ref.size is not None and seen[ref.index] != ref.size]
    if missing:
        listed = ", ".join(f"shard {i}: {n}" for i, n in missing[:10])
        raise RunFailed(
            f"{len(missing)} shard(s) have inputs with neither a result nor an error (missing rows {listed}): the "
            "pipeline lost them. Run the same command with --resume to redo exactly those.")


def _remove_orphan_parts(output: str, parts: list[dict], s3: fs.S3Options | None) -> None:
    """Delete mask files no part names: left by an attempt killed between writing a part and committing it."""
    storage = fs.storage_for(output, s3)
    kept = {uri for part in parts for uri in part["files"]}
    for page in storage.iter_files(fs.join(output, "masks")):
        for uri in page:
            if uri not in kept:
                storage.delete(uri)


@dataclass(frozen=True)
class ActorPlan:
    """How many inference actors, their Ray CPU request and their intra-op threads."""

    actors: int
    cpus_per_actor: float
    threads: int


def _actor_plan(config: RunConfig, max_useful: int | None = None) -> ActorPlan:
    """The inference actor pool for this run.

    CPU backends (torch on CPU, onnx), by default: one single-threaded actor per CPU, their Ray CPU requests sharing
    what the read/preprocess/write tasks leave. Measured with `unet-pipeline bench` on 2 cores: two 1-thread actors
    beat one 2-thread actor by 1.6-2x inside the pipeline, because torch's thread team stalls whenever a task takes
    one of its cores (README, "Benchmarks"). Accelerators (cuda, vacc): one actor per device (per die share), within
    the CPUs left for the tasks. `max_useful` (the number of shards to do) caps the pool: more actors would idle.
    """
    import ray

    from pipeline.ray_env import cluster_cpus

    cpus = cluster_cpus()
    room = max(cpus - config.num_cpus_per_task, 0.5)  # keep room for the read/preprocess/write tasks
    on_cpu = config.backend == "onnx" or (config.backend == "torch" and not config.device.startswith("cuda"))
    if config.concurrency is not None:
        actors = config.concurrency
    elif on_cpu:
        per_actor = config.num_cpus_per_actor or 1.0
        actors = max(1, int(cpus // per_actor)) if config.num_cpus_per_actor else max(1, int(cpus))
    else:
        by_cpus = max(1, int(room // (config.num_cpus_per_actor or 1.0)))
        devices = (ray.cluster_resources().get("VACC", 0) * config.actors_per_die if config.backend == "vacc"
                   else ray.cluster_resources().get("GPU", 0))
        actors = min(by_cpus, max(1, int(devices)))
    if max_useful is not None and config.concurrency is None:
        actors = max(1, min(actors, max_useful))
    cpus_per_actor = config.num_cpus_per_actor or round(min(1.0, room / actors), 3)
    if on_cpu:
        threads = config.threads_per_actor or max(1, round(cpus_per_actor))
    else:
        threads = config.threads_per_actor or max(1, int(cpus // actors))
    return ActorPlan(actors, cpus_per_actor, threads)


def sample_images_from(shards: list[ShardRef], layout: Layout, options: LayoutOptions, processing,
                       s3: fs.S3Options | None, max_pixels: int):
    """`sample_images(n)` for backend calibration: the first n decodable images of the run, preprocessed."""
    from pipeline.io.images import open_image
    from pipeline.io.source import read_shard

    def sample_images(n: int) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        for ref in shards:
            for table in read_shard(ref, layout, options, False, s3, frozenset(), block_rows=max(n, 1)):
                for data, error in zip(table.column("image").to_pylist(), table.column("error").to_pylist()):
                    if error or data is None:
                        continue
                    try:
                        images.append(processing.prepare(open_image(data, max_pixels=max_pixels)).image)
                    except Exception:  # a bad file is the pipeline's business, not calibration's
                        continue
                    if len(images) >= n:
                        return images
        return images

    return sample_images


def prepared_backend_spec(config: RunConfig, loaded: LoadedModel, processing, shards: list[ShardRef], layout: Layout,
                          options: LayoutOptions, s3: fs.S3Options | None, *, threads: int,
                          backend: str | None = None, precision: str | None = None,
                          backend_options: dict[str, Any] | None = None) -> BackendSpec:
    """The spec the inference actors build from, after the driver's once-per-job preparation (export, int8
    calibration on the run's own images, VACC file checks). `backend`/`precision`/`backend_options` override the
    config's (bench compares several)."""
    from pipeline.defaults import cache_dir

    spec = BackendSpec(name=backend or config.backend, model=loaded.family.name, checkpoint=config.checkpoint,
                       model_config=dict(loaded.config), device=config.device,
                       precision=precision or config.precision, threads=threads, batch_size=config.batch_size,
                       options=dict(config.backend_options if backend_options is None else backend_options))
    return prepare_backend(spec, PrepareContext(
        to_network_input=processing.to_network_input,
        sample_images=sample_images_from(shards, layout, options, processing, s3, config.max_pixels),
        cache_dir=str(cache_dir() / "backends"), s3=s3, calibration=config.calibration,
        calibration_images=config.calibration_images, vacc_model=config.vacc_model,
        actors_per_die=config.actors_per_die))


def _metrics(config: RunConfig, loaded: LoadedModel, layout: Layout, class_names: tuple[str, ...],
             parts: list[dict], timings: dict[str, float], num_classes: int) -> dict[str, Any]:
    total = np.zeros((num_classes, num_classes), np.int64)
    errors_by_stage: Counter[str] = Counter()
    num_ok = num_errors = scored = 0
    dice_sum = 0.0
    for part in parts:
        total += np.asarray(part["confusion"], np.int64).reshape(num_classes, num_classes)
        num_ok += part["num_ok"]
        num_errors += part["num_errors"]
        scored += part["num_scored"]
        dice_sum += part["dice_sum"]
        errors_by_stage.update(e["error_stage"] for e in part["errors"])
    metrics: dict[str, Any] = {"command": config.command}
    if config.command == "score":
        metrics.update(scores_from_confusion(total, class_names).to_dict())
        metrics["dice_per_image_mean"] = dice_sum / scored if scored else None
    wall = timings["wall_seconds"]
    metrics.update({
        "num_inputs": num_ok + num_errors,
        "num_images": num_ok,
        "num_errors": num_errors,
        "errors_by_stage": dict(errors_by_stage),
        "model": {
            "name": loaded.family.name, "source": loaded.family.source, "backbone": loaded.family.backbone,
            "config": loaded.config, "checkpoint": config.checkpoint, "checkpoint_sha256": loaded.checkpoint.sha256,
            "mask_values": loaded.checkpoint.metadata.get("mask_values"),
        },
        "dataset": {"uri": config.input, "layout": layout.name, "split": config.split if layout.name == "voc" else None,
                    "class_names": list(class_names)},
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "images_per_second": round(num_ok / timings["pipeline_seconds"], 3)
                    if timings["pipeline_seconds"] else None},
        "config": config.to_dict(),
        "version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    metrics["timings"]["wall_seconds"] = round(wall, 3)
    return metrics


def _check_error_limit(config: RunConfig, num_inputs: int, num_errors: int, by_stage: dict) -> None:
    limit = config.max_errors
    if limit is None or num_errors == 0:
        return
    allowed = limit * num_inputs if limit < 1 else limit
    if num_errors > allowed:
        summary = ", ".join(f"{stage}: {n}" for stage, n in sorted(by_stage.items()))
        raise RunFailed(
            f"{num_errors} of {num_inputs} inputs failed ({summary}), above --max-errors {config.max_errors}. "
            "See errors.jsonl in the output for each file and reason."
        )


def run(config: RunConfig, watch: ProgressWatch | None = None) -> RunResult:
    """Run one job (score or predict) and return its metrics; raise RunFailed if it broke --max-errors.

    With --run-id or --history the run is tracked (`pipeline.history`): it writes under `<output>/<run id>/`, is
    recorded in the history, and --baseline may fail it.
    """
    if config.run_id or config.history:
        from pipeline.history import run_tracked

        return run_tracked(config, watch)
    return run_pipeline(config, watch)


def run_pipeline(config: RunConfig, watch: ProgressWatch | None = None) -> RunResult:
    """The pipeline itself, writing into --output as given."""
    import ray

    from pipeline.ray_env import ensure_ray
    from pipeline.stages import Predictor, preprocess_batch

    started = time.perf_counter()
    s3 = config.s3.resolved()  # endpoint and region fixed on the driver; credentials stay in each node's env
    config = config.replace(input=fs.normalize(config.input), output=fs.normalize(config.output))
    check_no_overlap(config.input, config.output)
    layout = LAYOUTS.get(config.layout)
    scoring = config.command == "score"
    if scoring and not layout.has_labels:
        raise ConfigError(f"`score` needs labels, and the {layout.name} layout has none: use `predict`, or a layout "
                          "with labels (voc, carvana, isbi, pairs, parquet, webdataset).")

    loaded = load_model(config.model, config.checkpoint, s3=s3, **config.model_config)
    processing = create_processing(
        config.processing, family=loaded.family, num_classes=loaded.module.num_classes,
        in_channels=loaded.module.in_channels, scale=config.scale, input_size=config.input_size,
        threshold=config.threshold)
    num_classes = processing.num_classes_out
    class_names = config.class_names or layout.names_for(num_classes)
    if len(class_names) != num_classes:
        raise ConfigError(f"--class-names gives {len(class_names)} names for a {num_classes}-class model.")
    options = _layout_options(config, loaded)
    label_rule = layout.label_rule(num_classes, options) if scoring else None

    if not config.resume:
        _clean_previous(config.output, s3)
    listing_started = time.perf_counter()
    shards = plan_shards(layout, config.input, options, config.output, config.shard_size, s3,
                         reuse=config.resume, expect_labels=scoring, limit=config.limit)
    listing_seconds = time.perf_counter() - listing_started
    _check_resume_settings(config, loaded, s3)
    previous = _committed_parts(config.output, s3) if config.resume else []
    done = _done_rows(previous, config.output)

    if config.backend == "vacc":  # fail at once, before a Ray starts, when the vendor SDK is missing
        from pipeline.backends.vacc import require_sdk_installed

        require_sdk_installed()
    ensure_ray(config.ray_address, progress=config.progress)
    plan = _actor_plan(config)
    actors, threads = plan.actors, plan.threads
    spec = prepared_backend_spec(config, loaded, processing, shards, layout, options, s3, threads=threads)
    from pipeline.io.source import ShardDatasource

    source = ShardDatasource(shards, layout, options, scoring, s3,
                             {k: frozenset(v) for k, v in done.items()}, block_rows=config.shard_size)
    pending = len(source.get_read_tasks(1))
    if pending and pending < actors:
        plan = _actor_plan(config, max_useful=pending)
        actors = plan.actors
    sink = MaskSink(SinkSettings(config.output, config.formats, num_classes, scoring, loaded.family.name, s3))
    pipeline_started = time.perf_counter()
    if pending:
        resources: dict[str, Any] = {"num_cpus": plan.cpus_per_actor}
        if config.device.startswith("cuda"):
            resources["num_gpus"] = 1
        if config.backend == "vacc":
            from pipeline.backends.vacc_dies import check_cluster_offers_dies, resource_share

            check_cluster_offers_dies(config.actors_per_die)
            resources["resources"] = {"VACC": resource_share(config.actors_per_die)}  # K actors share a die
        dataset = (
            ray.data.read_datasource(source, override_num_blocks=pending, num_cpus=config.num_cpus_per_task)
            .map_batches(preprocess_batch, batch_size=None, batch_format="numpy", num_cpus=config.num_cpus_per_task,
                         fn_kwargs={"processing": processing, "label_rule": label_rule,
                                    "max_pixels": config.max_pixels})
        )
        with warnings.catch_warnings():  # Ray 2.60 takes actor retry settings only through **ray_remote_args
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = dataset.map_batches(
                Predictor, batch_size=None, batch_format="numpy",
                fn_constructor_kwargs={"spec": spec, "processing": processing, "s3": s3},
                compute=ray.data.ActorPoolStrategy(size=actors), **resources,
                max_restarts=-1, max_task_retries=INFERENCE_TASK_RETRIES)
        try:
            with watch(config.output, shards, s3) if watch else contextlib.nullcontext():
                dataset.write_datasink(sink, ray_remote_args={"num_cpus": config.num_cpus_per_task})
        except PipelineError:  # raised on purpose in a task (Ray's error subclasses it): its message says what to do
            raise
        except Exception as err:
            raise RunFailed(
                f"The pipeline stopped before it finished ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:500]}). "
                f"Every part committed so far is kept in {config.output}: fix the cause, then run the same command "
                "with --resume to do only the rest.") from err
    pipeline_seconds = time.perf_counter() - pipeline_started

    parts = previous + sink.parts
    _check_every_input_accounted(shards, parts)
    if config.resume:
        _remove_orphan_parts(config.output, parts, s3)
    retry_later = sum(e["error_stage"] == STORAGE_STAGE for part in sink.parts for e in part["errors"])
    if retry_later:
        logger.warning("%d inputs failed because the storage failed after its retries (stage 'storage' in "
                       "errors.jsonl): run the same command with --resume to try them again.", retry_later)
    timings = {"listing_seconds": listing_seconds, "pipeline_seconds": pipeline_seconds,
               "wall_seconds": time.perf_counter() - started}
    metrics = _metrics(config, loaded, layout, class_names, parts, timings, num_classes)
    metrics["processing"] = {"name": processing.name, "scale": config.scale,
                             "input_size": list(config.input_size) if config.input_size else None}
    metrics["backend"] = {"name": config.backend, "device": config.device, "precision": config.precision,
                          "actors": actors, "threads_per_actor": threads, "batch_size": config.batch_size}
    errors = [e for part in parts for e in part["errors"]]
    errors.sort(key=lambda e: (e["shard"], e["row"]))
    fs.write_bytes(fs.join(config.output, "errors.jsonl"),
                   "".join(json.dumps(e) + "\n" for e in errors).encode("utf-8"), s3)
    name = "metrics.json" if scoring else "summary.json"
    metrics_uri = fs.join(config.output, name)
    fs.write_bytes(metrics_uri, json.dumps(metrics, indent=2).encode("utf-8"), s3)
    if scoring and config.report:  # before the error limit: a run that failed on errors needs its report most
        from pipeline.report.run_report import report_after_run

        report_after_run(config.output, metrics, s3)
    _check_error_limit(config, metrics["num_inputs"], metrics["num_errors"], metrics["errors_by_stage"])
    return RunResult(metrics, config.output, metrics_uri)
