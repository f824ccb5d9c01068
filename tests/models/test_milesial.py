"""milesial UNet: upstream state_dict keys, parameter counts, and logits against the reference fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.models import MODELS, create_model
from pipeline.models.milesial import UNet, config_from_state_dict
from tests.reference_weights import reference_state_dict

REF = Path(__file__).parents[1] / "fixtures" / "reference"
IMAGES = ["img0_500x375", "img1_333x500"]


def key_list(path: str) -> list[tuple[str, tuple[int, ...], str]]:
    entries = json.loads((REF / path).read_text())["keys"]
    return [(e["key"], tuple(e["shape"]), e["dtype"]) for e in entries]


def model_keys(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def reference_unet() -> UNet:
    model = create_model("milesial")
    model.load_state_dict(reference_state_dict("keys_milesial.json", centered="milesial"))
    return model


@pytest.mark.parametrize(("bilinear", "keys_file", "params"), [
    (False, "keys_milesial.json", 31_037_698),
    (True, "keys_milesial_bilinear.json", 17_263_042),
])
def test_state_dict_keys_shapes_order_and_parameter_count(bilinear, keys_file, params):
    model = create_model("milesial", bilinear=bilinear)
    assert model_keys(model) == key_list(keys_file)
    assert n_params(model) == params
    assert (model.n_channels, model.n_classes, model.bilinear) == (3, 2, bilinear)
    assert (model.in_channels, model.num_classes) == (3, 2)
    assert not model.training


@pytest.mark.parametrize("scale", ["0.5", "1.0"])
@pytest.mark.parametrize("image", IMAGES)
def test_logits_match_upstream(reference_unet, scale, image):
    pil = Image.open(REF / "images" / f"{image}.png")
    w, h = pil.size
    pil = pil.resize((int(w * float(scale)), int(h * float(scale))), Image.BICUBIC)
    x = (np.asarray(pil).transpose(2, 0, 1) / 255.0).astype(np.float32)[None]  # float64 /255, then float32
    expected = np.load(REF / "expected" / "milesial_centered" / "logits" / f"scale{scale}"
                       / f"{image}_logits.npy")
    with torch.inference_mode():
        logits = reference_unet(torch.from_numpy(x)).numpy()
    assert logits.shape == expected.shape
    # observed: <= 2.1e-6 on torch 2.13 CPU
    assert np.abs(logits - expected).max() < 1e-4


def test_up_pads_bottom_right():
    # A 1-row/1-col deficit must be padded with zeros on the bottom/right, not top/left.
    model = create_model("milesial", base_channels=4)
    up = model.up4
    deeper, skip = torch.rand(1, 8, 2, 3), torch.rand(1, 4, 5, 7)
    captured = {}

    def keep_input(module, args):
        captured["x"] = args[0].clone()

    up.conv.register_forward_pre_hook(keep_input)
    with torch.inference_mode():
        up(deeper, skip)
    x = captured["x"]
    assert x.shape == (1, 8, 5, 7)
    assert torch.equal(x[:, :4], skip)  # skip first
    upsampled = x[:, 4:]
    assert torch.all(upsampled[..., 4, :] == 0) and torch.all(upsampled[..., :, 6] == 0)
    with torch.inference_mode():
        assert torch.allclose(upsampled[..., :4, :6], up.up(deeper))


def test_base_width_conv_bias_and_config_inference():
    model = create_model("milesial", in_channels=1, num_classes=5, base_channels=8, conv_bias=True,
                         bilinear=True)
    state = model.state_dict()
    assert state["inc.double_conv.0.weight"].shape == (8, 1, 3, 3)
    assert state["down4.maxpool_conv.1.double_conv.3.weight"].shape == (64, 64, 3, 3)  # 16 * 8 // 2
    assert "up3.conv.double_conv.3.bias" in state and "inc.double_conv.0.bias" in state
    assert config_from_state_dict(state) == {
        "in_channels": 1, "num_classes": 5, "bilinear": True, "base_channels": 8, "conv_bias": True}
    default = create_model("milesial").state_dict()
    assert config_from_state_dict(default) == MODELS.get("milesial").default_config
    assert config_from_state_dict({"vgg.features.0.weight": torch.zeros(64, 3, 3, 3)}) == {}


def test_input_checks():
    model = create_model("milesial", base_channels=4)
    with pytest.raises(InputError, match="at least 16x16"):  # shape rules: tests/models/test_models.py
        model(torch.rand(1, 3, 15, 64))
    with pytest.raises(ConfigError, match="positive integer"):
        create_model("milesial", num_classes=0)
    with pytest.raises(ConfigError, match="Valid options: in_channels, num_classes, bilinear, base_channels"):
        create_model("milesial", n_classes=2)


def test_registry_entry():
    family = MODELS.get("milesial")
    assert family.source == "milesial/Pytorch-UNet@a013c80"
    assert family.backbone == "double-conv"
    assert dict(family.default_config) == {
        "in_channels": 3, "num_classes": 2, "bilinear": False, "base_channels": 64, "conv_bias": False}
    assert (family.default_processing, family.default_input_size, family.input_divisor) == (
        "milesial-a013c80", (512, 512), 1)
    assert family.output_kind == "logits" and family.seed_parameters == 31_037_698
