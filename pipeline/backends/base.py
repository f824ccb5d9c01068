"""The contract every inference backend keeps, and the spec that says which one an actor builds.

A backend owns one device context (a CPU thread pool, a CUDA device, a VACC die) for its whole life. It takes
network-size uint8 images, because that is what preprocessing ships between workers and what a VACC die consumes
directly, and returns the network's raw output as float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

ToNetworkInput = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BackendSpec:
    """Everything an inference actor needs to build its backend (picklable, no secrets).

    Attributes:
        name: "torch", "onnx" or "vacc".
        model: registry name of the model family (None: inferred from the checkpoint).
        checkpoint: local path or s3:// URI of the weights.
        model_config: explicit model config overrides (num_classes, in_channels, ...).
        device: "cpu" or "cuda" (torch only).
        precision: "fp32", "fp16" or "int8".
        threads: intra-op threads for CPU backends (None: the actor's CPU share).
        batch_size: most images per forward call.
        options: backend-specific settings (ONNX file, calibration, VACC model prefix, ...).
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


class Backend(Protocol):
    """What the inference actor calls."""

    name: str

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) uint8 network-size images -> (N, C, h, w) float32 network output."""
        ...

    def close(self) -> None:
        """Release the device context. Idempotent."""
        ...
