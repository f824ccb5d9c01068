"""The run configuration: sections, flat keys, what changes results, and the CLI generated from it."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest

from pipeline.cli import cli
from pipeline.config import COMMAND_DEFAULTS, FLAT_KEYS, SECTIONS, DataConfig, RunConfig, section_from
from pipeline.errors import ConfigError

REQUIRED = {"input": "data", "output": "out", "checkpoint": "unet.pth"}
# What a reviewer decided changes masks or metrics; the marks on the fields must say the same.
RESULT_KEYS = {
    "input", "layout", "split", "image_dir", "mask_dir", "mask_suffix", "image_column", "mask_column",
    "id_column",
    "label_values", "ignore_index", "label_map", "class_names", "limit", "max_pixels", "model", "checkpoint",
    "model_config", "processing",
    "scale", "input_size", "threshold", "backend", "precision", "backend_options", "calibration",
    "calibration_images", "vacc_model", "format", "png_values",
}


def test_flat_keys_are_unique_and_every_field_is_marked():
    assert set(SECTIONS) == {"data", "model", "processing", "backend", "execution", "output", "tracking"}
    for key, where in FLAT_KEYS.items():
        assert isinstance(where.field.metadata["result"], bool) and where.field.metadata["help"], key
    assert {k for k, w in FLAT_KEYS.items() if w.field.metadata["result"]} == RESULT_KEYS


def test_result_settings_and_hash_come_from_the_marks():
    config = RunConfig.create(**REQUIRED)
    assert set(config.result_settings()) == RESULT_KEYS | {"command"}
    assert config.replace(batch_size=9, concurrency=2,
                          output="elsewhere").config_hash() == config.config_hash()
    assert config.replace(calibration="minmax").config_hash() != config.config_hash()


def test_flat_and_sectioned_dicts_build_the_same_config():
    flat = RunConfig.from_dict({**REQUIRED, "batch_size": 8, "input_size": "256x320", "label_values": "0,255",
                                "max_errors": "5%", "backend": "onnx"})
    nested = RunConfig.from_dict({"data": {"input": "data", "label_values": [0, 255]},
                                  "output": {"output": "out"}, "model": {"checkpoint": "unet.pth"},
                                  "execution": {"batch_size": 8, "max_errors": 0.05},
                                  "processing": {"input_size": [256, 320]}, "backend": {"backend": "onnx"}})
    assert flat == nested
    assert flat.processing.input_size == (256, 320) and flat.data.label_values == (0, 255)
    assert flat.backend.name == "onnx" and flat.execution.max_errors == 0.05


def test_to_dict_round_trips_through_json():
    config = RunConfig.create(**REQUIRED, input_size=128, class_names="a,b",
                              backend_options={"channels_last": 0})
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert section_from(config.to_dict(), DataConfig) == config.data


def test_unknown_keys_get_a_suggestion():
    with pytest.raises(ConfigError, match="Unknown run setting 'batchsize'. Did you mean 'batch_size'"):
        RunConfig.create(**REQUIRED, batchsize=4)
    with pytest.raises(ConfigError, match="in section 'execution'"):
        RunConfig.from_dict({**REQUIRED, "execution": {"bach_size": 4}})


@pytest.mark.parametrize(("changes", "message"), [
    ({"format": "jpeg"}, "--format"), ({"batch_size": 0}, "--batch-size"), ({"max_drop": 2}, "--max-drop"),
    ({"baseline": "last-good"}, "--history"), ({"input": ""}, "--input is required"),
    ({"limit": 0}, "--limit"), ({"calibration_images": 0}, "--calibration-images"),
])
def test_bad_values_are_refused_with_the_option_to_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.create(**{**REQUIRED, **changes})


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


@pytest.mark.parametrize("command", ["score", "predict", "bench"])
def test_cli_options_take_help_and_defaults_from_the_config_fields(command):
    options = _options(cli.commands[command])
    for key, where in FLAT_KEYS.items():
        if key not in options:
            continue
        option, f = options[key], where.field
        assert option.help == f.metadata["help"] or option.help, key
        default = COMMAND_DEFAULTS.get(command, {}).get(key, f.default)  # predict: --layout folder
        if default not in (dataclasses.MISSING, None, ""):  # "": a required setting, no default shown
            assert option.default == default, (f"--{key}: click default {option.default!r} != field "
                                               f"{default!r}")


def test_every_run_setting_has_an_option_or_is_config_file_only():
    options = _options(cli.commands["score"])
    config_file_only = {"backend_options", "model_config", "num_cpus_per_task"}  # dicts; a tuning knob
    assert set(FLAT_KEYS) - set(options) == config_file_only
