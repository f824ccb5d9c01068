"""PyTorch inference on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backends.base import BackendEntry, BackendSpec, ToNetworkInput
from pipeline.errors import BackendUnavailable
from pipeline.io.fs import S3Options

if TYPE_CHECKING:
    from pipeline.config import BackendConfig


class TorchBackend:
    """One torch model on one device; channels-last on CPU where faster (see README, "CPU fast path")."""

    name = "torch"

    def __init__(self, spec: BackendSpec, to_network_input: ToNetworkInput,
                 s3: S3Options | None = None) -> None:
        import torch

        from pipeline.models import load_model

        ENTRY.check_precision(spec.precision)
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"--device {spec.device} was asked for but torch sees no CUDA device here: use --device cpu, "
                "or run on a node with a GPU (Ray places the actors there when --device cuda requests "
                "num_gpus=1)."
            )
        self._torch = torch
        self._to_network_input = to_network_input
        loaded = load_model(spec.model, spec.checkpoint, s3=s3, **spec.model_config)
        self.loaded = loaded
        self._device = torch.device(spec.device)
        self._dtype = torch.float16 if spec.precision == "fp16" else torch.float32
        self._channels_last = bool(spec.options.get("channels_last", spec.device == "cpu"))
        module = loaded.module.to(self._device, dtype=self._dtype).eval()
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._module: Any = module
        self._closed = False
        # torch's intra-op pool is process-wide: set it last (once nothing can fail) for this backend's life,
        # and put it back on close, so a backend built in the driver (bench's bare loop, tests) leaves the
        # caller's thread count as it was.
        self._threads_before = torch.get_num_threads()
        if spec.threads:
            torch.set_num_threads(int(spec.threads))

    def run(self, images: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the torch backend was closed")
        torch = self._torch
        x = torch.from_numpy(self._to_network_input(images)).to(self._device, dtype=self._dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self._module(x)
        return out.float().contiguous().cpu().numpy()

    def close(self) -> None:
        if not self._closed:
            self._torch.set_num_threads(self._threads_before)
        self._module = None
        self._closed = True


def _on_cpu(settings: BackendConfig) -> bool:
    return not settings.device.startswith("cuda")


def _gpus(settings: BackendConfig, cluster: Mapping[str, float]) -> int:
    return int(cluster.get("GPU", 0))


def _resources(settings: BackendConfig) -> dict[str, Any]:
    return {} if _on_cpu(settings) else {"num_gpus": 1}


ENTRY = BackendEntry(
    name="torch",
    description="PyTorch on the CPU (channels-last) or on CUDA with --device cuda (one actor per GPU).",
    precisions=("fp32", "fp16"),
    create=TorchBackend,
    runs_on_cpu=_on_cpu,
    devices=_gpus,
    actor_resources=_resources,
)
