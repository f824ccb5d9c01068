"""Inference backends by name (`--backend NAME`), each built inside the actor that owns its device.

Two steps, on two sides of the cluster:

* `prepare_backend` runs once per job on the driver: whatever must exist before any actor starts (an ONNX export,
  an int8 calibration, checks on compiled VACC model files) is made there, cached, and recorded in the returned
  spec's `options`, so N actors never repeat it.
* `create_backend` runs inside each inference actor and builds the device context from that spec. Vendor SDKs are
  imported there, never at module import.
"""

from __future__ import annotations

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
    if name not in BACKEND_NAMES:
        raise UnknownNameError(f"Unknown backend {name!r}. Valid names: {', '.join(BACKEND_NAMES)}.")


def prepare_backend(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    """Driver side, once per job: returns the spec the actors build from (options filled in)."""
    _check_name(spec.name)
    return spec


def create_backend(spec: BackendSpec, to_network_input: ToNetworkInput, s3: S3Options | None = None) -> Backend:
    """Actor side: build the backend `spec` names."""
    _check_name(spec.name)
    if spec.name == "torch":
        from pipeline.backends.torch_backend import TorchBackend

        return TorchBackend(spec, to_network_input, s3)
    raise UnknownNameError(f"Backend {spec.name!r} is not available in this build.")


__all__ = ["BACKEND_NAMES", "Backend", "BackendSpec", "PrepareContext", "SampleImages", "create_backend",
           "prepare_backend"]
