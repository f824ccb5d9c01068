"""The contract every inference backend keeps, the spec an actor builds it from, and its registry entry.

A backend owns one device context (a CPU thread pool, a CUDA device, a VACC die) for its whole life. It takes
network-size uint8 images, because that is what preprocessing ships between workers and what a VACC die
consumes directly, and returns the network's raw output as float32.

Each backend module declares one `BackendEntry`: how it prepares once per job on the driver (`prepare`), how
an actor builds it (`create`), whether it runs on the CPU, how many devices a cluster offers it and what Ray
resources each actor requests, and its precisions. The run asks the entry; nothing compares backend names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import BackendConfig, RunConfig
    from pipeline.cpu_features import CpuFeatures
    from pipeline.io.fs import S3Options

ToNetworkInput = Callable[[np.ndarray], np.ndarray]
SampleImages = Callable[[int], list[np.ndarray]]
"""`sample_images(n)`: up to n network-size uint8 (h, w, c) images from the job's dataset, for calibration."""


# Options a preparation adds that say how it went, not what the actors build (an object-store reference to the
# model bytes, whether the cache was hit, how long it took): two specs differing only in them build the same
# backend, so a process's actor pool serves both (`pipeline.pool`).
TRANSIENT_OPTIONS = frozenset({"onnx_model_ref", "onnx_cache_hit", "onnx_build_seconds"})


@dataclass(frozen=True)
class BackendSpec:
    """Everything an inference actor needs to build its backend (picklable, no secrets).

    Attributes:
        name: the backend's registry name (or `package.module:ENTRY`).
        model: registry name of the model family (None: inferred from the checkpoint).
        checkpoint: local path or s3:// URI of the weights.
        model_config: explicit model config overrides (num_classes, in_channels, ...).
        device: "cpu" or "cuda" (torch only).
        precision: one of the entry's precisions.
        threads: intra-op threads for CPU backends (None: the actor's CPU share).
        batch_size: most images per forward call.
        options: backend-specific settings, completed by the entry's `prepare` (ONNX file, VACC model, ...).
    """

    name: str = "torch"
    model: str | None = None
    checkpoint: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    batch_size: int = 4
    options: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> BackendSpec:
        """The spec without its `TRANSIENT_OPTIONS`: equal identities build the same backend."""
        return dataclasses.replace(self, options={k: v for k, v in self.options.items()
                                                  if k not in TRANSIENT_OPTIONS})

    @classmethod
    def of_run(cls, config: RunConfig, model: str, threads: int | None, **changes: Any) -> BackendSpec:
        """The spec of a run's backend section; `changes` override fields (bench compares backends)."""
        spec = cls(name=config.backend.name, model=model, checkpoint=config.model.checkpoint,
                   model_config=dict(config.model.overrides), device=config.backend.device,
                   precision=config.backend.precision, threads=threads,
                   batch_size=config.execution.batch_size,
                   options=dict(config.backend.options))
        return dataclasses.replace(spec, **changes)


class Backend(Protocol):
    """What the inference actor calls."""

    name: str

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) uint8 network-size images -> (N, C, h, w) float32 network output."""
        ...

    def close(self) -> None:
        """Release the device context. Idempotent."""
        ...


@dataclass(frozen=True)
class PrepareContext:
    """What driver-side preparation may use.

    Attributes:
        settings: the run's backend section (calibration method and images, VACC model, actors per die, ...).
        to_network_input: the processing's uint8 (N,h,w,c) -> float32 (N,c,h,w) conversion.
        sample_images: calibration images from the dataset being scored.
        cache_dir: local folder for exported / calibrated model files, keyed by the caller's settings.
        s3: S3 options for checkpoints on S3.
        cpu: the CPU features of the nodes the actors run on (None: this machine's), which decide int8 weight
            bits and whether bf16 is native.
    """

    settings: BackendConfig
    to_network_input: ToNetworkInput
    sample_images: SampleImages
    cache_dir: str
    s3: S3Options | None = None
    cpu: CpuFeatures | None = None


@dataclass(frozen=True)
class BackendChoice:
    """What an entry that picks another backend (`auto`) chose: its name, why, and its prepared spec."""

    name: str
    reason: str
    spec: BackendSpec


def _unchanged(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    return spec


def _always(settings: BackendConfig) -> bool:
    return True


def _no_resources(settings: BackendConfig) -> dict[str, Any]:
    return {}


def _nothing_to_check(settings: BackendConfig, cluster: Mapping[str, float] | None) -> None:
    return None


@dataclass(frozen=True)
class BackendEntry:
    """One `--backend` choice.

    Attributes:
        name: registry name.
        description: one line for `--help` and the README.
        precisions: the `--precision` values it runs; the first is its default.
        create: actor side, `create(spec, to_network_input, s3) -> Backend`, once per actor.
        prepare: driver side, once per job: returns the spec the actors build from (export, calibration, file
            checks), `prepare(spec, context)`.
        runs_on_cpu: whether actors of these settings compute on CPU cores (then one single-threaded actor per
            core by default); else on devices, one actor per device.
        devices: how many actors the cluster's devices take (`devices(settings, cluster_resources)`); used
        only
            when `runs_on_cpu` is False.
        actor_resources: Ray resources each actor requests besides CPUs (`{"num_gpus": 1}`,
            `{"resources": {"VACC": 0.5}}`).
        check: called on the driver before anything runs (cluster None: before Ray starts): fail fast when an
            SDK, a device or a cluster resource is missing.
        choose: for an entry that runs another one (`auto`): picks it, `choose(spec, context) ->
            BackendChoice`, on the driver once per job, before the run records its settings (so `--resume`
            compares the backend that really ran).
    """

    name: str
    description: str
    precisions: tuple[str, ...]
    create: Callable[[BackendSpec, ToNetworkInput, S3Options | None], Backend]
    prepare: Callable[[BackendSpec, PrepareContext], BackendSpec] = _unchanged
    runs_on_cpu: Callable[[BackendConfig], bool] = _always
    devices: Callable[[BackendConfig, Mapping[str, float]], int] | None = None
    actor_resources: Callable[[BackendConfig], dict[str, Any]] = _no_resources
    check: Callable[[BackendConfig, Mapping[str, float] | None], None] = _nothing_to_check
    choose: Callable[[BackendSpec, PrepareContext], BackendChoice] | None = None

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(f"--backend {self.name} runs --precision {' | '.join(self.precisions)}, not "
                              f"{precision!r}.{_precision_hint(self.name, precision)}")


def _precision_hint(backend: str, precision: str) -> str:
    if precision == "int8" and backend != "onnx":
        return " Use --backend onnx --precision int8 for int8 on the CPU."
    return ""
