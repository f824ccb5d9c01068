"""Config files name settings as the options do (`address`, `num_classes`, `s3_endpoint`, ...); an unknown or
misspelt name is refused first, naming the file, the closest option and the valid option names."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeline.cli import cli, run_commands


def _write(tmp_path, settings) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(settings))
    return str(path)


def test_an_unknown_key_names_the_file_the_closest_option_and_option_names(tmp_path):
    path = _write(tmp_path, {"input": "data", "batchsize": 8})
    result = CliRunner().invoke(cli, ["score", "--config", path, "-c", "m.pth", "-o", "out"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: Unknown setting 'batchsize' in {path}. Did you mean 'batch_size'?"), line
    names = line.split(": ")[-1].rstrip(".").split(", ")
    assert "address" in names and "num_classes" in names and "s3_endpoint" in names
    assert not {"ray_address", "command", "s3"} & set(names)


def test_a_misspelt_input_is_named_before_the_built_in_default_is_considered(tmp_path):
    path = _write(tmp_path, {"inputs": "data"})
    result = CliRunner().invoke(cli, ["score", "--config", path, "-c", "m.pth", "-o", "out"])
    assert result.exit_code == 2
    assert "Unknown setting 'inputs'" in result.stderr and "Did you mean 'input'?" in result.stderr
    assert "built-in default" not in result.stderr


def test_option_names_work_in_a_config_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(run_commands, "_execute", lambda config, as_json: seen.append(config))
    path = _write(tmp_path, {"input": "data", "address": "auto", "num_classes": 3,
                             "s3_endpoint": "http://127.0.0.1:9000", "batch_size": 8})
    result = CliRunner().invoke(cli, ["score", "--config", path, "-c", "m.pth", "-o", "out"])
    assert result.exit_code == 0, result.output
    config = seen[0]
    assert config.execution.ray_address == "auto" and config.execution.batch_size == 8
    assert config.model.overrides == {"num_classes": 3}
    assert config.s3.endpoint_url == "http://127.0.0.1:9000"
