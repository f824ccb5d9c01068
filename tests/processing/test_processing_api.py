"""The processing contract: exact /255, registry and options, pickling, JSON meta, shape checks."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, PipelineError, UnknownNameError
from pipeline.models import MODELS
from pipeline.processing import PROCESSINGS, create_processing, to_network_input


def test_to_network_input_equals_float64_division_then_float32():
    values = np.arange(256, dtype=np.uint8)
    grid = values.reshape(16, 16)
    images = np.stack([grid, values[::-1].reshape(16, 16), grid.T], axis=-1)
    images = np.stack([images, images[::-1]])  # (2, 16, 16, 3)
    x = to_network_input(images)
    expected = (images.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    assert x.dtype == np.float32 and x.shape == (2, 3, 16, 16) and x.flags.c_contiguous
    assert np.array_equal(x.view(np.uint32), expected.view(np.uint32))
    # the same values as float32 division (bubbliiiing) and torch's ToTensor (uint8 -> float32, / 255)
    assert np.array_equal(x, images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    with pytest.raises(PipelineError, match="uint8"):
        to_network_input(images.astype(np.float32))


def test_registry_and_upstream_resolution():
    assert PROCESSINGS.names() == ["upstream", "milesial-a013c80", "milesial-21d7850", "bubbliiiing",
                                   "zhixuhao", "resize", "model-res"]
    for name, mode in PROCESSINGS.items():
        assert mode.description
    expected = {"milesial": "milesial-a013c80", "bubbliiiing-vgg16": "bubbliiiing",
                "bubbliiiing-resnet50": "bubbliiiing", "zhixuhao": "zhixuhao"}
    for family_name, mode in expected.items():
        family = MODELS.get(family_name)
        config = family.default_config
        proc = create_processing("upstream", family=family, num_classes=config["num_classes"],
                                 in_channels=config["in_channels"])
        assert proc.name == mode and proc.family == family_name
    with pytest.raises(UnknownNameError, match="Did you mean 'bubbliiiing'"):
        create_processing("bubbliing", family=MODELS.get("milesial"), num_classes=2, in_channels=3)


@pytest.mark.parametrize(("mode", "options", "message"), [
    ("milesial-a013c80", {"input_size": (256, 256)}, "--input-size does not apply.*takes --scale"),
    ("milesial-21d7850", {"input_size": (256, 256)}, "--input-size does not apply"),
    ("resize", {"scale": 0.5}, "--scale does not apply.*takes --input-size"),
    ("model-res", {"scale": 0.5}, "--scale does not apply"),
    ("resize", {"input_size": (0, 10)}, "two positive integers"),
    ("resize", {"input_size": (1.5, 10)}, "two positive integers"),
    ("resize", {"threshold": 1.5}, "between 0 and 1"),
    ("resize", {"num_classes": 0}, "1..255"),
    ("resize", {"num_classes": 256}, "1..255"),
])
def test_option_errors(mode, options, message):
    kwargs = {"num_classes": 2, "in_channels": 3, **options}
    with pytest.raises(ConfigError, match=message):
        create_processing(mode, family=MODELS.get("milesial"), **kwargs)


def test_milesial_modes_refuse_networks_that_need_fixed_multiples():
    with pytest.raises(ConfigError, match="multiples of 32.*bubbliiiing"):
        create_processing("milesial-a013c80", family=MODELS.get("bubbliiiing-vgg16"), num_classes=21,
                          in_channels=3)


def _all_modes() -> list:
    milesial = MODELS.get("milesial")
    zhixuhao = MODELS.get("zhixuhao")
    return [
        create_processing("milesial-a013c80", family=milesial, num_classes=2, in_channels=3, scale=0.5),
        create_processing("milesial-21d7850", family=milesial, num_classes=2, in_channels=3, scale=0.5),
        create_processing("bubbliiiing", family=MODELS.get("bubbliiiing-resnet50"), num_classes=21,
                          in_channels=3, input_size=(64, 64)),
        create_processing("zhixuhao", family=zhixuhao, num_classes=1, in_channels=1, input_size=(64, 64)),
        create_processing("resize", family=milesial, num_classes=2, in_channels=3, input_size=(64, 64)),
        create_processing("model-res", family=milesial, num_classes=2, in_channels=3, input_size=(64, 64)),
    ]


@pytest.mark.parametrize("proc", _all_modes(), ids=lambda p: p.name)
def test_pickle_round_trip_and_json_meta(proc):
    copy = pickle.loads(pickle.dumps(proc))
    assert copy == proc and copy is not proc and copy.name == proc.name
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    prepared = proc.prepare(image)
    meta = json.loads(json.dumps(prepared.meta))  # the pipeline ships meta as JSON
    assert meta == prepared.meta
    assert np.array_equal(copy.prepare(image).image, prepared.image)
    c = prepared.image.shape[2]
    assert prepared.image.dtype == np.uint8 and c == proc.in_channels
    h, w = proc.network_size(meta)
    assert prepared.image.shape[:2] == (h, w)
    output = np.random.default_rng(1).standard_normal((proc.num_classes, h, w)).astype(np.float32)
    if proc.output_kind == "probabilities":
        output = 1 / (1 + np.exp(-output))
    classes = copy.finish(output, meta)
    assert classes.dtype == np.uint8 and classes.shape == proc.output_size(meta)
    assert np.array_equal(classes, proc.finish(output, prepared.meta))
    assert int(classes.max()) < proc.num_classes_out
    label = np.zeros((50, 70), dtype=np.uint8)
    assert proc.prepare_label(label, meta).shape == proc.output_size(meta)


def test_finish_rejects_outputs_of_the_wrong_shape():
    proc = create_processing("resize", family=MODELS.get("milesial"), num_classes=2, in_channels=3,
                             input_size=(32, 32))
    meta = proc.prepare(Image.new("RGB", (40, 30))).meta
    with pytest.raises(PipelineError, match=r"\(2, 32, 32\).*\(3, 32, 32\)"):
        proc.finish(np.zeros((3, 32, 32), np.float32), meta)


def test_num_classes_out():
    family = dataclasses.replace(MODELS.get("milesial"), name="custom")
    assert create_processing("resize", family=family, num_classes=1, in_channels=3).num_classes_out == 2
    assert create_processing("resize", family=family, num_classes=5, in_channels=3).num_classes_out == 5
