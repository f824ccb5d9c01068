"""PyTorch inference on CPU or CUDA.

Precisions: fp32; fp16 (weights and activations in half precision); bf16 through `torch.autocast`: weights
stay fp32 and the convolutions run in bfloat16 (oneDNN's native bf16 kernels on CPUs with avx512_bf16 or
AMX). Measured on the 2-core AMD EPYC with avx512_bf16 (packaged model, 256x256, 1 thread): autocast 24 ms per
image, bf16 weights and inputs 64 ms, fp32 channels-last 135 ms, so autocast it is. On a CPU without those
flags bf16 is emulated and slower than fp32, so it is refused there (`check_bf16`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backends.base import BackendEntry, BackendSpec, ToNetworkInput
from pipeline.cpu_features import BF16_FLAGS, CpuFeatures
from pipeline.errors import BackendUnavailable, ConfigError
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
        if spec.precision == "bf16" and spec.device == "cpu":
            from pipeline.cpu_features import detect

            check_bf16(detect())  # the node this actor runs on
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
        self._autocast = torch.bfloat16 if spec.precision == "bf16" else None
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
            if self._autocast is not None:
                with torch.autocast(self._device.type, dtype=self._autocast):
                    out = self._module(x)
            else:
                out = self._module(x)
        return out.float().contiguous().cpu().numpy()

    def close(self) -> None:
        if not self._closed:
            self._torch.set_num_threads(self._threads_before)
        self._module = None
        self._closed = True


def check_bf16(cpu: CpuFeatures) -> None:
    """ConfigError, in one line naming the flag and the alternative, when `cpu` has no native bf16."""
    if not cpu.bf16:
        raise ConfigError(f"--precision bf16 needs a CPU with {' or '.join(BF16_FLAGS)} (native bf16 "
                          f"matrix maths); {cpu.model} has neither flag, where bf16 is emulated and slower "
                          "than fp32: use --precision fp32, or --backend onnx --precision int8 for speed.")


def _check(settings: BackendConfig, cluster: Mapping[str, float] | None) -> None:
    """bf16 on the CPU: this machine before Ray starts, then every node the actors may run on."""
    if settings.precision != "bf16" or not _on_cpu(settings):
        return
    from pipeline import cpu_features

    check_bf16(cpu_features.detect() if cluster is None else cpu_features.on_actor_nodes())


def _on_cpu(settings: BackendConfig) -> bool:
    return not settings.device.startswith("cuda")


def _gpus(settings: BackendConfig, cluster: Mapping[str, float]) -> int:
    return int(cluster.get("GPU", 0))


def _resources(settings: BackendConfig) -> dict[str, Any]:
    return {} if _on_cpu(settings) else {"num_gpus": 1}


ENTRY = BackendEntry(
    name="torch",
    description="PyTorch on the CPU (channels-last) or on CUDA with --device cuda (one actor per GPU); bf16 "
                "by autocast on CPUs with avx512_bf16/AMX.",
    precisions=("fp32", "fp16", "bf16"),
    create=TorchBackend,
    runs_on_cpu=_on_cpu,
    devices=_gpus,
    actor_resources=_resources,
    check=_check,
)
