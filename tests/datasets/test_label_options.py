"""`--ignore-index` and `--label-map`: what label values mean, checked on decoded labels, in the configuration
(resume refuses a change) and through the CLI's parsing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from faults.support import base_config
from PIL import Image

from pipeline.cli import cli
from pipeline.config import DataConfig, RunConfig
from pipeline.datasets import LAYOUTS
from pipeline.errors import ConfigError, InputError
from pipeline.labels import label_map_pairs, parse_label_map

RAW = np.array([[0, 1, 2], [11, 255, 3]], np.uint8)  # CamVid-like: 11 = void


def _png(values: np.ndarray) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(values, "L").save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def _decode(layout: str, num_classes: int, values: np.ndarray = RAW, **options) -> np.ndarray:
    return LAYOUTS.get(layout).label_rule(num_classes, DataConfig(**options))(_png(values))


def test_ignore_index_names_the_value_that_is_not_scored():
    with pytest.raises(InputError, match=r"values \[11\] outside the model's 11 classes"):
        _decode("pairs", 11)  # the layout's default ignores only 255
    camvid = np.where(RAW == 255, 10, RAW).astype(np.uint8)
    np.testing.assert_array_equal(_decode("pairs", 11, camvid, ignore_index=11), [[0, 1, 2], [255, 10, 3]])
    with pytest.raises(InputError, match=r"values \[255\] .*11 = ignore"):  # 11 replaces 255, not adds
        _decode("pairs", 11, ignore_index=11)
    with pytest.raises(InputError, match=r"values \[255\] .*nothing ignored.*--label-values 0,255"):
        _decode("pairs", 12, ignore_index="none")
    np.testing.assert_array_equal(_decode("pairs", 12, RAW[:, :3] % 255, ignore_index="none"),
                                  [[0, 1, 2], [11, 0, 3]])


def test_label_map_maps_raw_values_then_the_ignore_index_applies():
    cityscapes = "0:ignore,1:0,2:1,3:2,11:ignore"
    np.testing.assert_array_equal(_decode("pairs", 3, label_map=cityscapes),
                                  [[255, 0, 1], [255, 255, 2]])  # unmapped raw 255 = the ignore index
    with pytest.raises(InputError, match=r"values \[255\] that are not classes.*--label-map"):
        _decode("pairs", 3, label_map=cityscapes, ignore_index="none")
    binary = np.array([[0, 255], [255, 255]], np.uint8)
    np.testing.assert_array_equal(_decode("pairs", 2, binary, label_map="0:0,255:1"), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(_decode("pairs", 2, binary, label_values=(0, 255)), [[0, 1], [1, 1]])
    with pytest.raises(ConfigError, match="sends raw value 255 to class 1, but the model has 1 classes"):
        LAYOUTS.get("pairs").label_rule(1, DataConfig(label_map="0:0,255:1"))


def test_reduce_zero_label_is_mmsegmentations_convention():
    raw = np.array([[0, 1, 5], [150, 255, 0]], np.uint8)
    np.testing.assert_array_equal(_decode("pairs", 150, raw, label_map="reduce_zero_label"),
                                  [[255, 0, 4], [149, 255, 255]])
    assert parse_label_map("reduce-zero-label") == "reduce_zero_label"
    assert label_map_pairs("reduce_zero_label", 150)[1] == 0


def test_label_map_forms_and_files_give_one_canonical_map(tmp_path):
    text = tmp_path / "cityscapes.txt"
    text.write_text("# raw:train\n7:0\n8:1\n0:ignore\n")
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"7": 0, "8": 1, "0": "ignore"}))
    expected = "0:ignore,7:0,8:1"
    assert {parse_label_map(v) for v in (str(text), str(as_json), "8:1, 7:0, 0:ignore", [[7, 0], [8, 1],
                                                                                          [0, 255]])} == {
        expected}
    for bad, message in (("7:0,7:1", "mapped twice"), ("7-0", "neither RAW:CLASS"), ("300:1", "0..255"),
                         ("7:x", "not RAW:CLASS")):
        with pytest.raises(ConfigError, match=message):
            parse_label_map(bad)
    with pytest.raises(ConfigError, match="--label-map and --label-values"):
        LAYOUTS.get("pairs").label_rule(2, DataConfig(label_map="0:0,255:1", label_values=(0, 255)))


def test_the_label_settings_change_results_so_resume_refuses_a_change(tmp_path):
    from pipeline.resume import check_resume_settings

    config = base_config("in", str(tmp_path / "out"), "c.pth")
    check_resume_settings(config, "sha", None)
    for change in ({"ignore_index": 11}, {"ignore_index": "none"}, {"label_map": "0:0,255:1"}):
        key = next(iter(change))
        with pytest.raises(ConfigError, match=f"other settings \\({key}: "):
            check_resume_settings(config.replace(resume=True, **change), "sha", None)
    again = RunConfig.from_dict(config.replace(label_map="255:1,0:0", ignore_index="11").to_dict())
    assert (again.data.label_map, again.data.ignore_index) == ("0:0,255:1", 11)  # metrics.json round trip


def test_the_cli_takes_the_label_options(tmp_path):
    for args, message in ((["--ignore-index", "300"], "0..255"), (["--label-map", "nope"], "neither")):
        result = CliRunner().invoke(cli, ["score", "-c", "x.pth", "-i", str(tmp_path), "-o",
                                          str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and message in result.output, result.output  # a usage error, one line
    text = CliRunner().invoke(cli, ["score", "--help"]).output
    assert "--ignore-index" in text and "--label-map" in text and "reduce_zero_label" in text
