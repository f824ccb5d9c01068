"""The `unet-pipeline` CLI as users call it: the console script in a subprocess, or click in-process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import factories
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.models import MODELS, create_model

ROOT = Path(__file__).resolve().parents[2]


def _unet_pipeline(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                            bilinear=False).state_dict(),
               path)
    return str(path)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_and_is_in_the_readme(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert f"| `{command}" in (ROOT / "README.md").read_text(), f"README's command table lacks `{command}`"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_refuses_an_unknown_option(command):
    result = CliRunner().invoke(cli, [command, "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_registry_choices_reach_the_cli():
    from pipeline.backends import BACKENDS

    options = {p.name: p for p in cli.commands["score"].params}
    assert list(options["backend"].type.choices) == BACKENDS.names()
    precisions = {p for _, entry in BACKENDS.items() for p in entry.precisions}
    assert set(options["precision"].type.choices) == precisions


@pytest.mark.parametrize("command", ["score", "predict", "bench"])
def test_run_commands_share_option_names_and_show_examples(command):
    text = CliRunner().invoke(cli, [command, "--help"]).output
    assert "Examples:" in text
    for option in ("--model", "--checkpoint", "--input", "--layout", "--backend", "--batch-size",
                   "--concurrency",
                   "--processing", "--scale", "--input-size"):
        assert option in text, f"{command} lacks {option}"
    if command != "bench":
        assert "--output" in text and "--format" in text


def test_unknown_model_is_a_one_line_error_with_a_suggestion(tmp_path, tiny_checkpoint):
    (tmp_path / "data").mkdir()
    result = _unet_pipeline("score", "-m", "milesal", "-c", tiny_checkpoint, "-i", str(tmp_path / "data"),
                            "-o",
                            str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2  # a bad option: the name is checked while the options are parsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "milesial" in lines[0] and "Traceback" not in result.stderr


def test_missing_checkpoint_names_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    result = _unet_pipeline("score", "-c", str(tmp_path / "nope.pth"), "-i", str(tmp_path / "data"), "-o",
                            str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1
    assert "--checkpoint" in result.stderr and "nope.pth" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_inside_input_is_refused(tmp_path, tiny_checkpoint):
    factories.write_pairs(tmp_path / "data", factories.samples(2))
    result = _unet_pipeline("score", "-c", tiny_checkpoint, "-i", str(tmp_path / "data"), "-o",
                            str(tmp_path / "data" / "out"), cwd=tmp_path)
    assert result.returncode == 1
    assert "overlaps" in result.stderr


def test_models_json_lists_the_registry():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == MODELS.names()
    for row in rows:
        assert row["parameters"] > 0 and row["processing"] == MODELS.get(row["name"]).default_processing


def test_predict_writes_one_png_per_image_in_process(tmp_path, ray_session, tiny_checkpoint):
    items = factories.samples(3, size=(64, 48))
    factories.write_folder(tmp_path / "photos", items)
    result = CliRunner().invoke(cli, ["predict", "-c", tiny_checkpoint, "-i", str(tmp_path / "photos"), "-o",
                                      str(tmp_path / "masks"), "--format", "png", "--scale", "1.0",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "masks" / "png").glob("*.png"))
    assert [p.stem for p in pngs] == [item_id for item_id, _, _ in items]
    for path in pngs:
        mask = np.asarray(Image.open(path))
        assert mask.shape == (48, 64) and mask.max() < 4
    summary = json.loads((tmp_path / "masks" / "summary.json").read_text())
    assert summary["num_images"] == 3 and summary["num_errors"] == 0


def test_score_config_file_and_command_line_override(tmp_path, ray_session, tiny_checkpoint):
    factories.write_pairs(tmp_path / "data", factories.samples(2, size=(48, 48)))
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"input": str(tmp_path / "data"), "output": str(tmp_path / "ignored"),
                                  "checkpoint": tiny_checkpoint, "scale": 1.0, "batch_size": 2}))
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "-o", str(tmp_path / "out"), "--json",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{"):])
    assert metrics["config"]["output"] == str(tmp_path / "out") and metrics["config"]["batch_size"] == 2
    assert (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "ignored").exists()


def test_default_score_on_a_fresh_machine_prints_miou_above_0_9(tmp_path):
    """The README's first command: no arguments, the built-in dataset and packaged checkpoint."""
    result = _unet_pipeline("score", cwd=tmp_path, env={"UNET_PIPELINE_CACHE": str(tmp_path / "cache"),
                                                        "CI": "1"}, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"mIoU (\d\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) > 0.9
    metrics = json.loads((tmp_path / "runs" / "default" / "metrics.json").read_text())
    assert metrics["num_images"] == 48 and metrics["num_errors"] == 0
    assert metrics["class_names"] == ["background", "disc", "square", "triangle"]
