"""Streaming scoring of UNet segmentation models on Ray Data.

The Python API (`pipeline.api`): `score(...)` and `predict(...)` take the CLI's options as keyword arguments
and return a `RunResult` (metrics, per-class table, output paths). They load on first use, so `import
pipeline` stays light (no Ray, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "RunResult", "__version__", "predict", "score"]

if TYPE_CHECKING:
    from pipeline.api import predict, score
    from pipeline.config import RunConfig
    from pipeline.results import RunResult

_LAZY = {"score": "pipeline.api", "predict": "pipeline.api", "RunConfig": "pipeline.config",
         "RunResult": "pipeline.results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
