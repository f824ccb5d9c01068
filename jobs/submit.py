"""Submit a scoring or prediction job with the Ray Jobs Python SDK, follow its log, exit with its outcome.

    python jobs/submit.py --address http://HEAD:8265 -- --input s3://data/val --output s3://runs/nightly ...

Everything after `--` goes to `jobs/score.py` (or `jobs/predict.py` with `--command predict`). The project
folder is uploaded as the job's working directory (what `ray job submit --working-dir .` does), so the cluster
needs Ray, torch and the dependencies, not this project. Exit status: 0 when the job SUCCEEDED, 1 when it
FAILED or was STOPPED, the same verdict the job's own exit status gave Ray.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UPLOAD_EXCLUDES = [".git", "tests", "docs", "runs", "**/__pycache__"]  # not needed by a job


def submit(address: str, command: str, job_args: list[str], submission_id: str | None = None,
           env: dict[str, str] | None = None) -> str:
    """Submit `python jobs/<command>.py <job_args>` with the project as cwd; returns the submission id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["python", f"jobs/{command}.py", *job_args])
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": UPLOAD_EXCLUDES}
    if env:
        runtime_env["env_vars"] = env
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)


def follow(address: str, submission_id: str, poll_seconds: float = 2.0, echo=click.echo) -> str:
    """Print the job's log as it grows until the job ends; returns its final status name."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    shown = 0
    while True:
        status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status.value
        time.sleep(poll_seconds)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", envvar="RAY_ADDRESS", default="http://127.0.0.1:8265", show_default=True,
              help="The Ray dashboard (job server) URL; RAY_ADDRESS also works.")
@click.option("--command", type=click.Choice(["score", "predict"]), default="score", show_default=True)
@click.option("--submission-id", help="Name the job (default: Ray picks raysubmit_...).")
@click.option("--no-wait", is_flag=True, help="Print the submission id and return without following the job.")
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
def main(address: str, command: str, submission_id: str | None, no_wait: bool, job_args: tuple[str,
                                                                                               ...]) -> None:
    """Submit jobs/score.py (or jobs/predict.py) with JOB_ARGS to a Ray cluster and follow it."""
    job_id = submit(address, command, list(job_args), submission_id)
    click.echo(f"submitted {job_id} to {address}", err=True)
    if no_wait:
        return
    status = follow(address, job_id)
    click.echo(f"job {job_id}: {status}", err=True)
    sys.exit(0 if status == "SUCCEEDED" else 1)


if __name__ == "__main__":
    main()
