"""What `jobs/score.py` and `jobs/predict.py` share: run one CLI command as a Ray job, with progress lines.

The job takes exactly the options of `unet-pipeline score|predict` (the click commands parse them; nothing is
declared twice) and exits like the CLI: 0 when the run passed, 1 when it failed (a pipeline error, more errors
than --max-errors, or the --baseline regression gate), 2 for bad options. Ray marks the job SUCCEEDED or
FAILED from that.

An output inside the job's working directory (`ray job submit --working-dir .` runs the job in a temporary
copy, `.../runtime_resources/working_dir_files/...`, deleted after the job) would be lost with it: a relative
`--output`, or none (the built-in run's `runs/default`), is refused there with exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pipeline.config import RunConfig

RAY_WORKING_DIR = os.path.join("runtime_resources", "working_dir_files")
"""Part of the path of the temporary copy of `--working-dir` that Ray runs a job in."""


def check_output_survives(config: RunConfig, cwd: str | None = None) -> None:
    """Refuse (exit status 2) an output that lies inside Ray's temporary working directory of the job."""
    from pipeline.io import fs

    cwd = os.path.realpath(cwd or os.getcwd())
    uri = config.output.uri
    if fs.is_s3(uri) or RAY_WORKING_DIR not in cwd:
        return
    target = os.path.realpath(os.path.join(cwd, uri))
    if os.path.commonpath([target, cwd]) != cwd:
        return
    from pipeline.cli.options import BadOptions

    raise BadOptions(f"--output {uri} lies in the job's working directory {cwd}, a temporary copy that Ray "
                     "deletes after the job: pass --output as an s3:// URI or an absolute path on storage "
                     "that outlives the job.")


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
    hooks = RunHooks(progress=LineProgress, check_config=check_output_survives)
    main([command, *argv], obj=hooks)  # exits non-zero itself when the run fails
    sys.exit(0)
