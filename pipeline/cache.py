"""The project's cache folder: built-in datasets, exported and calibrated backend models.

`$UNET_PIPELINE_CACHE/unet-pipeline`, else `$XDG_CACHE_HOME/unet-pipeline`, else `~/.cache/unet-pipeline`.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "UNET_PIPELINE_CACHE"


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "unet-pipeline"
