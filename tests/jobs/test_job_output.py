"""The Ray job entry points keep their outputs and exit as documented: an output inside Ray's temporary
working directory of the job (lost when the job ends) is refused, and bad options exit with status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray  # noqa: F401 (the job's header imports it, which sets RAY_CLIENT_MODE: not during a test)
from click import UsageError

from jobs.entrypoint import RAY_WORKING_DIR, check_output_survives, run_job
from pipeline.config import RunConfig


def _job(capsys, monkeypatch, *args: str, cwd: Path) -> tuple[int, str]:
    """(exit status, stderr) of `python jobs/score.py ARGS` run in `cwd` (in this process: what the script
    runs after setting its import path)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(SystemExit) as exited:
        run_job("score", list(args))
    return int(exited.value.code or 0), capsys.readouterr().err


@pytest.fixture
def job_dir(tmp_path) -> Path:
    """A folder shaped like the copy of `--working-dir` that Ray runs a job in."""
    folder = tmp_path / "session_latest" / RAY_WORKING_DIR / "_ray_pkg_0123abcd"
    folder.mkdir(parents=True)
    return folder


def test_a_relative_output_in_the_jobs_working_dir_is_refused_with_status_2(capsys, monkeypatch, tmp_path,
                                                                            job_dir):
    (tmp_path / "data").mkdir()
    status, err = _job(capsys, monkeypatch, "-c", "never-read.pth", "-i", str(tmp_path / "data"), "-o",
                       "runs/nightly", cwd=job_dir)
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--output runs/nightly lies in the job's working directory" in errors[0], err
    assert "s3://" in errors[0] and not (job_dir / "runs").exists()


def test_a_bad_option_value_exits_2_as_documented(capsys, monkeypatch, tmp_path):
    status, err = _job(capsys, monkeypatch, "-c", "m.pth", "-i", str(tmp_path), "-o", str(tmp_path / "out"),
                       "--batch-size", "0", cwd=tmp_path)
    assert status == 2, err
    assert err.strip().splitlines()[-1] == "Error: --batch-size and --shard-size must be at least 1."


@pytest.mark.parametrize("output, refused", [
    ("runs/x", True), ("./out", True), ("{cwd}/out", True), ("/tmp/elsewhere/out", False),
    ("s3://bucket/runs", False), ("../../outside", False),
])
def test_only_outputs_inside_the_working_dir_are_refused(job_dir, output, refused):
    config = RunConfig.create(input="in", checkpoint="m.pth", output=output.format(cwd=job_dir))
    if refused:
        with pytest.raises(UsageError) as err:
            check_output_survives(config, cwd=str(job_dir))
        assert err.value.exit_code == 2
    else:
        check_output_survives(config, cwd=str(job_dir))


def test_outside_a_ray_job_a_relative_output_is_fine(tmp_path):
    config = RunConfig.create(input="in", checkpoint="m.pth", output="runs/x")
    check_output_survives(config, cwd=str(tmp_path))
