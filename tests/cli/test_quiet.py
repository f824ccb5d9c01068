"""A successful CLI run prints the summary on stdout and, piped, only progress lines on stderr (a line every N
seconds and one at the end, the jobs' LineProgress); in a clean environment no Ray warning or error lines
(token authentication, actor restarts, progress-bar nags)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import factories
import pytest
import ray
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.models import create_model

RAY_NOISE = re.compile(r"WARNING|\bE\d{4}\b| E |core_worker|tqdm|auth", re.IGNORECASE)


@pytest.fixture
def tiny_run(tmp_path):
    """(checkpoint, dataset) of a 4-image run."""
    torch.manual_seed(7)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                            bilinear=False).state_dict(), checkpoint)
    return checkpoint, factories.write_pairs(tmp_path / "data", factories.samples(4, size=(48, 40)))


def test_piped_output_gets_progress_lines(tmp_path, ray_session, tiny_run, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_PROGRESS_INTERVAL", "0.2")
    checkpoint, data = tiny_run
    result = CliRunner().invoke(cli, ["score", "-c", str(checkpoint), "-i", str(data), "-o",
                                      str(tmp_path / "out"), "--scale", "1.0"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) >= 2 and all(line.startswith("progress: ") for line in lines), lines
    assert lines[0].startswith("progress: 0 ")
    assert lines[-1].startswith("progress: 4/4 inputs committed (4 images, 0 errors)"), lines


@pytest.mark.slow  # its own local Ray: about a minute on 2 busy cores
@pytest.mark.integration
def test_a_successful_run_in_a_clean_environment_has_no_ray_noise(tmp_path, tiny_run):
    checkpoint, data = tiny_run
    # a clean environment: none of the RAY_* settings the test session makes for its own Ray
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("CI", None)
    done = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "score", "-c",
                           str(checkpoint), "-i", str(data), "-o", str(tmp_path / "out"), "--scale", "1.0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    noise = [line for line in lines if not line.startswith("progress: ")]
    assert noise == [], "\n".join(noise)
    assert not any(RAY_NOISE.search(line) for line in lines)
    assert lines[-1].startswith("progress: 4/4 inputs committed (4 images, 0 errors)"), lines
    assert "mIoU" in done.stdout


@pytest.mark.parametrize("verbose, level", [(False, logging.WARNING), (True, logging.INFO)])
def test_verbose_lets_rays_log_lines_through(monkeypatch, verbose, level):
    from pipeline import ray_env

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    for key in [*ray_env._QUIET_ENV, *ray_env.NODE_LOSS_RETRY_ENV, "RAY_DATA_DISABLE_PROGRESS_BARS"]:
        monkeypatch.setenv(key, os.environ.get(key, ""))  # put back afterwards, whatever ensure_ray sets
    data_logger = logging.getLogger("ray.data")
    monkeypatch.setattr(data_logger, "level", data_logger.level)
    ray_env.ensure_ray("127.0.0.1:6379", verbose=verbose)
    assert calls[0]["logging_level"] == level and data_logger.level == level
    options = {p.name for p in cli.commands["score"].params}
    assert "verbose" in options
