"""What `jobs/score.py` and `jobs/predict.py` share: run one CLI command as a Ray job, with progress lines.

The job takes exactly the options of `unet-pipeline score|predict` (the click commands parse them; nothing is
declared twice) and exits like the CLI: 0 when the run passed, 1 when it failed (a pipeline error, more errors
than --max-errors, or the --baseline regression gate), 2 for bad options. Ray marks the job SUCCEEDED or
FAILED from that.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def _header(command: str) -> str:
    import ray

    import pipeline

    where = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    address = os.environ.get("RAY_ADDRESS") or "a new local Ray"
    return (f"unet-pipeline {command} job: pipeline {pipeline.__version__} from {where}, Ray "
            f"{ray.__version__}, cluster {address}")


def run_job(command: str, argv: list[str]) -> NoReturn:
    """Run `unet-pipeline <command> <argv>` with progress lines for the job log, then exit with its status."""
    from pipeline.cli import main
    from pipeline.cli.run_commands import RunHooks
    from pipeline.progress import LineProgress

    sys.stdout.reconfigure(line_buffering=True)  # a job log is a file: show each line as it is printed
    sys.stderr.reconfigure(line_buffering=True)
    print(_header(command))
    main([command, *argv], obj=RunHooks(progress=LineProgress))  # exits non-zero itself when the run fails
    sys.exit(0)
