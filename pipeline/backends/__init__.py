"""Inference backends by name (`--backend NAME`), each built inside the actor that owns its device.

Two steps, on two sides of the cluster:

* `prepare_backend` runs once per job on the driver: whatever must exist before any actor starts (an ONNX export,
  an int8 calibration, checks on compiled VACC model files) is made there, cached, and recorded in the returned
  spec's `options`, so N actors never repeat it.
* `create_backend` runs inside each inference actor and builds the device context from that spec. Vendor SDKs are
  imported there, never at module import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.backends.base import Backend, BackendSpec, ToNetworkInput
from pipeline.errors import UnknownNameError
from pipeline.io.fs import S3Options

BACKEND_NAMES = ("torch", "onnx", "vacc")

SampleImages = Callable[[int], list[np.ndarray]]
"""`sample_images(n)`: up to n network-size uint8 (h, w, c) images from the job's dataset, for calibration."""


@dataclass(frozen=True)
class PrepareContext:
    """What driver-side preparation may use.

    Attributes:
        to_network_input: the processing's uint8 (N,h,w,c) -> float32 (N,c,h,w) conversion.
        sample_images: calibration images from the dataset being scored.
        cache_dir: local folder for exported / calibrated model files, keyed by the caller's settings.
        s3: S3 options for checkpoints on S3.
        calibration: "entropy" (KL divergence), "percentile" or "minmax".
        calibration_images: how many images calibration uses.
        vacc_model: prefix of compiled VACC model files.
        actors_per_die: VACC actors sharing one die.
    """

    to_network_input: ToNetworkInput
    sample_images: SampleImages
    cache_dir: str
    s3: S3Options | None = None
    calibration: str = "entropy"
    calibration_images: int = 32
    vacc_model: str | None = None
    actors_per_die: int = 1


def _check_name(name: str) -> None:
    if name not in BACKEND_NAMES and ":" not in name:
        raise UnknownNameError(f"Unknown backend {name!r}. Valid names: {', '.join(BACKEND_NAMES)}, or "
                               "package.module:factory for a backend of your own.")


def external_backend(name: str) -> Callable[..., Backend]:
    """Extension point: backend `package.module:factory` (RunConfig.backend, config files) is built by
    `factory(spec, to_network_input, s3)`. The module must be importable on every Ray worker; the fault tests use
    it to inject actor crashes (tests/faults/crashing_backend.py)."""
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownNameError(f"Backend {name!r}: cannot load {attr!r} from module {module_name!r} ({err}). "
                               "Check the name, and that the module is on the Ray workers' Python path.") from err


def prepare_backend(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    """Driver side, once per job: returns the spec the actors build from (options filled in)."""
    _check_name(spec.name)
    if ":" in spec.name:
        external_backend(spec.name)  # fail on the driver, before any actor starts
    if spec.name == "vacc":
        from pipeline.backends.vacc import prepare_vacc

        return prepare_vacc(spec, context.to_network_input, vacc_model=context.vacc_model,
                            actors_per_die=context.actors_per_die, s3=context.s3)
    if spec.name == "onnx":
        from pipeline.backends.onnx_models import prepare_onnx

        return prepare_onnx(spec, context)
    return spec


def create_backend(spec: BackendSpec, to_network_input: ToNetworkInput, s3: S3Options | None = None) -> Backend:
    """Actor side: build the backend `spec` names."""
    _check_name(spec.name)
    if ":" in spec.name:
        return external_backend(spec.name)(spec, to_network_input, s3)
    if spec.name == "torch":
        from pipeline.backends.torch_backend import TorchBackend

        return TorchBackend(spec, to_network_input, s3)
    if spec.name == "vacc":
        from pipeline.backends.vacc import VaccBackend

        return VaccBackend(spec, s3)  # the die normalises on the device (the VDSP op), not to_network_input
    if spec.name == "onnx":
        from pipeline.backends.onnx_backend import OnnxBackend

        return OnnxBackend(spec, to_network_input, s3)
    raise UnknownNameError(f"Backend {spec.name!r} is not available in this build.")


__all__ = ["BACKEND_NAMES", "Backend", "BackendSpec", "PrepareContext", "SampleImages", "create_backend",
           "prepare_backend"]
