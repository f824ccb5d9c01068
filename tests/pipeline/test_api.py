"""The Python API: `from pipeline import score, predict`, the CLI's options as keyword arguments, the CLI's
defaults, and a result with metrics, a per-class table and the output paths."""

from __future__ import annotations

import json
import os

import factories
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import ConfigError
from pipeline.models import create_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                            bilinear=False).state_dict(), path)
    return str(path)


def test_score_from_python_returns_metrics_per_class_table_and_paths(tmp_path, ray_session, tiny_checkpoint):
    from pipeline import score

    data = factories.write_pairs(tmp_path / "data", factories.samples(3, size=(48, 40)))
    result = score(input=str(data), output=str(tmp_path / "out"), checkpoint=tiny_checkpoint, scale=1.0,
                   batch_size=2, progress=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result.metrics == written and result.miou == written["miou"]
    assert written["num_images"] == 3 and written["config"]["batch_size"] == 2
    assert [row["class"] for row in result.per_class] == written["class_names"]
    for row in result.per_class:
        assert row["iou"] == written["per_class_iou"][row["class"]]
        assert row["support"] == written["per_class_support"][row["class"]]
    assert set(result.paths) == {"output", "metrics", "errors", "report", "masks"}
    for key in ("metrics", "errors", "report", "masks"):
        assert os.path.exists(result.paths[key]), key


def _cli_config(monkeypatch, args):
    """The RunConfig the CLI would run for `args` (the run itself is not started)."""
    from pipeline.cli import cli, run_commands

    seen = []
    monkeypatch.setattr(run_commands, "_execute", lambda config, as_json: seen.append(config))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return seen[0]


@pytest.mark.parametrize("command", ["score", "predict"])
def test_the_api_builds_the_same_run_as_the_cli(monkeypatch, tmp_path, command):
    from pipeline.api import config_for

    cli_config = _cli_config(monkeypatch, [command, "-c", "m.pth", "-i", "in", "-o", "out", "--scale", "0.5",
                                           "--num-classes", "3", "--s3-region", "eu-west-1"])
    api_config = config_for(command, {"checkpoint": "m.pth", "input": "in", "output": "out", "scale": 0.5,
                                      "num_classes": 3, "s3_region": "eu-west-1"})
    assert api_config == cli_config
    assert api_config.data.layout == ("folder" if command == "predict" else "pairs")


def test_an_unknown_keyword_is_refused_with_the_closest_option():
    from pipeline import predict

    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        predict(input="in", output="out", checkpoint="m.pth", batch_sise=2)
