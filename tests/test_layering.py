"""What importing a module loads: reading a history, a report or a run's records needs neither Ray nor torch,
and the CLI starts without either (they load when a command needs them). `lint-imports` (pyproject.toml)
checks the static import graph; this checks what a fresh interpreter really loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT_MODULES = [
    "pipeline", "pipeline.api",
    "pipeline.history", "pipeline.report.run_report", "pipeline.report.history_report", "pipeline.results",
    "pipeline.resume", "pipeline.io.commits", "pipeline.config", "pipeline.metrics", "pipeline.datasets",
    "pipeline.cli", "pipeline.backends", "pipeline.actor_plan",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_loads_neither_ray_nor_torch(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('ray', 'torch') if m in sys.modules); "
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing {module} loads {done.stdout.strip()}"
