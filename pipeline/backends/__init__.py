"""Inference backends by name (`--backend NAME`), each built inside the actor that owns its device."""

from __future__ import annotations

from pipeline.backends.base import Backend, BackendSpec, ToNetworkInput
from pipeline.errors import UnknownNameError
from pipeline.io.fs import S3Options

BACKEND_NAMES = ("torch", "onnx", "vacc")


def create_backend(spec: BackendSpec, to_network_input: ToNetworkInput, s3: S3Options | None = None) -> Backend:
    """Build the backend `spec` names. Vendor SDKs are imported here, inside the actor, never at module import."""
    if spec.name == "torch":
        from pipeline.backends.torch_backend import TorchBackend

        return TorchBackend(spec, to_network_input, s3)
    raise UnknownNameError(f"Unknown backend {spec.name!r}. Valid names: {', '.join(BACKEND_NAMES)}.")


__all__ = ["BACKEND_NAMES", "Backend", "BackendSpec", "create_backend"]
