"""Inference backends by name (`--backend NAME`): the registry, and the two calls the run makes.

Two steps, on two sides of the cluster:

* `prepare_backend` runs once per job on the driver: whatever must exist before any actor starts (an ONNX
  export, an int8 calibration, checks on compiled VACC model files) is made there, cached, and recorded in the
  returned spec's `options`, so N actors never repeat it.
* `create_backend` runs inside each inference actor and builds the device context from that spec. Vendor SDKs
  are
  imported there, never at module import.

A backend of your own: a module defining a `BackendEntry`, named `package.module:ENTRY` (it must be importable
on every Ray worker), or registered with `BACKENDS.register`. A plain factory `package.module:factory`
(`factory(spec, to_network_input, s3) -> Backend`) is taken as a CPU backend of any precision.
"""

from __future__ import annotations

import importlib

from pipeline.backends import auto, onnx_backend, torch_backend, vacc_entry
from pipeline.backends.base import (
    Backend,
    BackendChoice,
    BackendEntry,
    BackendSpec,
    PrepareContext,
    SampleImages,
    ToNetworkInput,
)
from pipeline.errors import UnknownNameError
from pipeline.io.fs import S3Options
from pipeline.registry import Registry

ANY_PRECISION = ("fp32", "fp16", "bf16", "int8")


class BackendRegistry(Registry[BackendEntry]):
    """The registry, which also resolves `package.module:ENTRY` names by importing them."""

    def get(self, name: str) -> BackendEntry:
        if ":" in name and name not in self:
            return external_backend(name)
        return super().get(name)


def external_backend(name: str) -> BackendEntry:
    """The entry `package.module:ATTR` names: a BackendEntry, or a factory taken as a CPU backend."""
    module_name, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise UnknownNameError(f"Backend {name!r}: cannot load {attr!r} from module {module_name!r} ({err}). "
                               "Check the name, and that the module is on the Ray workers' Python "
                               "path.") from err
    if isinstance(found, BackendEntry):
        return found
    if not callable(found):
        raise UnknownNameError(f"Backend {name!r} is neither a BackendEntry nor a factory "
                               "`factory(spec, to_network_input, s3) -> Backend`.")
    return BackendEntry(name=name, description=f"factory {name}", precisions=ANY_PRECISION, create=found)


BACKENDS = BackendRegistry("backend")
BACKENDS.register("auto", auto.ENTRY)
BACKENDS.register("torch", torch_backend.ENTRY)
BACKENDS.register("onnx", onnx_backend.ENTRY)
BACKENDS.register("vacc", vacc_entry.ENTRY)


def prepare_backend(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    """Driver side, once per job: returns the spec the actors build from (options filled in)."""
    entry = BACKENDS.get(spec.name)
    entry.check_precision(spec.precision)
    return entry.prepare(spec, context)


def create_backend(spec: BackendSpec, to_network_input: ToNetworkInput,
                   s3: S3Options | None = None) -> Backend:
    """Actor side: build the backend `spec` names."""
    return BACKENDS.get(spec.name).create(spec, to_network_input, s3)


__all__ = ["BACKENDS", "Backend", "BackendChoice", "BackendEntry", "BackendSpec", "PrepareContext",
           "SampleImages", "ToNetworkInput",
           "create_backend", "external_backend", "prepare_backend"]
