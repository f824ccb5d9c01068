"""The processing contract: exact /255, registry and options, pickling, JSON meta, shape checks."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass, field

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
    assert PROCESSINGS.names()[0] == "upstream"  # create_processing lists the others as names()[1:]
    for name, mode in PROCESSINGS.items():
        assert mode.name == name and mode.description
        assert (mode.cls is None) == (name == "upstream")
        assert mode.cls is None or (mode.cls.name == name and mode.cls.options <= {"scale", "input_size"})
    for family_name in MODELS.names():
        family = MODELS.get(family_name)
        config = family.default_config
        proc = create_processing("upstream", family=family, num_classes=config["num_classes"],
                                 in_channels=config["in_channels"])
        assert proc.name == family.default_processing and proc.family == family_name
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


@dataclass(frozen=True)
class ModeCase:
    """A model a processing mode is built for in the contract test (family, its shape, the mode's options)."""

    family: str
    num_classes: int
    in_channels: int
    options: dict = field(default_factory=dict)


MODE_CASES: dict[str, ModeCase] = {
    "upstream": ModeCase("zhixuhao", 1, 1, {"input_size": (64, 64)}),
    "milesial-a013c80": ModeCase("milesial", 2, 3, {"scale": 0.5}),
    "milesial-21d7850": ModeCase("milesial", 2, 3, {"scale": 0.5}),
    "bubbliiiing": ModeCase("bubbliiiing-resnet50", 21, 3, {"input_size": (64, 64)}),
    "zhixuhao": ModeCase("zhixuhao", 1, 1, {"input_size": (64, 64)}),
    "resize": ModeCase("milesial", 2, 3, {"input_size": (64, 64)}),
    "model-res": ModeCase("milesial", 2, 3, {"input_size": (64, 64)}),
}


def built_mode(name: str):
    """The registered processing `name`, built for its MODE_CASES entry (a test fails if it has none)."""
    if name not in MODE_CASES:
        pytest.fail(f"Processing {name!r} is registered in pipeline.processing.PROCESSINGS but has no "
                    f"ModeCase: add MODE_CASES[{name!r}] = ModeCase(<family>, <num_classes>, <in_channels>, "
                    "<options>) to tests/processing/test_processing_api.py.", pytrace=False)
    case = MODE_CASES[name]
    return create_processing(name, family=MODELS.get(case.family), num_classes=case.num_classes,
                             in_channels=case.in_channels, **case.options)


def test_every_mode_case_is_registered():
    assert not set(MODE_CASES) - set(PROCESSINGS.names()), "MODE_CASES names unregistered processings"


@pytest.mark.parametrize("name", PROCESSINGS.names())
def test_pickle_round_trip_and_json_meta(name):
    proc = built_mode(name)
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
