"""The shared model tester: every entry of `pipeline.models.MODELS` runs these, parametrized on the registry.

Forward on a tiny input, the shape rules (input divisor, input and output channels), the config read back off
the tensors, and a checkpoint round trip (save -> load_model -> the same tensors and the same logits) in every
checkpoint format the family is read from. A new family is tested here as soon as it is registered; it needs
one `ModelCase` in CASES below (a test fails, saying so, until it has one). Per-family details (upstream keys,
reference logits, error texts) stay in tests/models/test_<family>.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pipeline.errors import ConfigError, InputError
from pipeline.models import MODELS, ModelFamily, create_model, load_model
from pipeline.models.checkpoints import read_checkpoint
from pipeline.models.loading import infer_family
from pipeline.processing import PROCESSINGS
from tests.models.checkpoint_files import WRITERS


@dataclass(frozen=True)
class ModelCase:
    """What the tester needs to know about one family beyond its registry entry.

    Attributes:
        configs: small configs the family supports (tests stay fast; non-default values show that the config
        is
            read back off the tensors). Each is overlaid on the family's default_config.
        formats: the checkpoint formats the family is read from (keys of
        tests/models/checkpoint_files.WRITERS).
    """

    configs: tuple[dict[str, Any], ...]
    formats: tuple[str, ...] = ("torch", "safetensors")


CASES: dict[str, ModelCase] = {
    "milesial": ModelCase(({"in_channels": 1, "num_classes": 3, "base_channels": 8},
                           {"base_channels": 8, "bilinear": True, "conv_bias": True})),
    "bubbliiiing-vgg16": ModelCase(({"in_channels": 1, "num_classes": 4},)),
    "bubbliiiing-resnet50": ModelCase(({"in_channels": 1, "num_classes": 2},)),
    "zhixuhao": ModelCase(({"in_channels": 3},), formats=("torch", "safetensors", "keras-hdf5")),
}
MISSING = ModelCase(({},))


def family_configs() -> list:
    """(name, config index) for every registered family and every config of its case."""
    return [pytest.param(name, index, id=f"{name}-{index}") for name in MODELS.names()
            for index in range(len(CASES.get(name, MISSING).configs))]


def family_formats() -> list:
    """(name, config index, checkpoint format) for every registered family, config and format of its case."""
    return [pytest.param(name, index, fmt, id=f"{name}-{index}-{fmt}") for name in MODELS.names()
            for index in range(len(CASES.get(name, MISSING).configs)) for fmt in CASES.get(name,
                                                                                           MISSING).formats]


@dataclass(frozen=True)
class Built:
    """One family's model for one case config, and its output on the tiny input."""

    family: ModelFamily
    config: dict[str, Any]
    module: torch.nn.Module
    x: torch.Tensor
    output: torch.Tensor


def case_for(name: str) -> ModelCase:
    if name not in CASES:
        pytest.fail(f"Model family {name!r} is registered in pipeline.models.MODELS but has no ModelCase: "
                    f"add CASES[{name!r}] = ModelCase(configs=(<a small config>,), formats=(<checkpoint "
                    "formats it reads>,)) to tests/models/test_models.py.", pytrace=False)
    return CASES[name]


def tiny_size(family: ModelFamily) -> tuple[int, int]:
    """The smallest (H, W) input the shape rules allow, wider than high: one and two input units."""
    unit = max(16, family.input_divisor)  # milesial needs at least 16x16 (four 2x2 pools)
    return unit, 2 * unit


def build(name: str, index: int) -> Built:
    """The family's model for CASES[name].configs[index], with non-trivial BN statistics, and its output."""
    family = MODELS.get(name)
    config = {**family.default_config, **case_for(name).configs[index]}
    torch.manual_seed(index)
    module = create_model(name, **config)
    with torch.no_grad():
        for buffer_name, buffer in module.named_buffers():  # so that a buffer lost on the way shows
            if buffer_name.endswith("running_mean"):
                buffer.normal_()
            elif buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    x = torch.rand(1, config["in_channels"], *tiny_size(family))
    with torch.inference_mode():
        output = module(x)
    return Built(family, config, module, x, output)


@pytest.fixture(scope="module")
def models() -> Callable[[str, int], Built]:
    """models(name, index): built once per module, in any test order (full-size families take seconds)."""
    cache: dict[tuple[str, int], Built] = {}

    def get(name: str, index: int) -> Built:
        if (name, index) not in cache:
            cache[(name, index)] = build(name, index)
        return cache[(name, index)]

    return get


def test_every_case_is_a_registered_model():
    stale = sorted(set(CASES) - set(MODELS.names()))
    assert not stale, f"CASES in tests/models/test_models.py names unregistered models: {stale}"


@pytest.mark.parametrize("name", MODELS.names())
def test_registry_entry_is_consistent(name):
    case_for(name)
    family = MODELS.get(name)
    assert family.name == name and family.source and family.backbone
    assert {"in_channels", "num_classes"} <= set(family.default_config)
    assert family.default_processing in PROCESSINGS.names()
    assert family.output_kind in ("logits", "probabilities")
    assert family.input_divisor >= 1
    assert all(s > 0 and s % family.input_divisor == 0 for s in family.default_input_size)
    for fmt in case_for(name).formats:
        assert fmt in WRITERS, (f"{name}: no writer for checkpoint format {fmt!r} in "
                                "tests/models/checkpoint_files.py")


@pytest.mark.parametrize(("name", "index"), family_configs())
def test_forward_on_a_tiny_input(models, name, index):
    model = models(name, index)
    height, width = tiny_size(model.family)
    assert not model.module.training
    assert (model.module.in_channels, model.module.num_classes) == (model.config["in_channels"],
                                                                   model.config["num_classes"])
    out = model.output
    assert out.shape == (1, model.config["num_classes"], height, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if model.family.output_kind == "probabilities":
        assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0  # not a constant map


@pytest.mark.parametrize(("name", "index"), family_configs())
def test_shape_rules(models, name, index):
    """Sizes off the input divisor: kept (divisor 1) or refused naming the divisor; wrong channels refused."""
    model = models(name, index)
    divisor = model.family.input_divisor
    height, width = tiny_size(model.family)
    odd = torch.rand(1, model.config["in_channels"], height + 1, width + divisor // 2 + 1)
    with torch.inference_mode():
        if divisor == 1:
            assert model.module(odd).shape == (1, model.config["num_classes"], *odd.shape[2:])
        else:
            with pytest.raises(ConfigError, match=f"multiples of {divisor}"):
                model.module(odd)
        channels = model.config["in_channels"]
        with pytest.raises(InputError, match=rf"\(N, {channels}, H, W\)"):
            model.module(torch.rand(1, channels + 1, height, width))


@pytest.mark.parametrize(("name", "index"), family_configs())
def test_config_is_read_back_off_the_tensors(models, name, index):
    model = models(name, index)
    inferred = model.family.config_from_state_dict(model.module.state_dict())
    assert inferred and inferred.items() <= model.config.items()


@pytest.mark.parametrize(("name", "index", "fmt"), family_formats())
def test_checkpoint_round_trip(models, name, index, fmt, tmp_path):
    """save -> load_model -> the same tensors and bit-identical logits, with the config read off the file."""
    model = models(name, index)
    suffix, write = WRITERS[fmt]
    path = tmp_path / f"{name}{suffix}"
    write(model.module.state_dict(), path)
    checkpoint = read_checkpoint(str(path))
    assert checkpoint.metadata["format"] == fmt
    assert infer_family(checkpoint.state_dict, checkpoint.metadata) in (name, None)  # never another family
    loaded = load_model(name, checkpoint)
    assert loaded.family.name == name and loaded.config == model.config
    expected = model.module.state_dict()
    got = loaded.module.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), "a tensor changed on the way"
    assert not loaded.module.training
    with torch.inference_mode():
        assert torch.equal(loaded.module(model.x), model.output)
