"""bubbliiiing UNet (VGG16 / ResNet50): upstream keys, parameter counts, logits against the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.models import MODELS, create_model
from pipeline.models.bubbliiiing import resnet50_config_from_state_dict, vgg16_config_from_state_dict
from tests.reference_weights import reference_state_dict

REF = Path(__file__).parents[1] / "fixtures" / "reference"
IMAGES = ["img0_500x375", "img1_333x500"]
BACKBONES = {"vgg16": 24_892_437, "resnet50": 43_934_101}


def key_list(path: str) -> list[tuple[str, tuple[int, ...], str]]:
    entries = json.loads((REF / path).read_text())["keys"]
    return [(e["key"], tuple(e["shape"]), e["dtype"]) for e in entries]


@pytest.fixture(scope="module")
def reference_models() -> dict[str, torch.nn.Module]:
    models = {}
    for backbone in BACKBONES:
        model = create_model(f"bubbliiiing-{backbone}")
        model.load_state_dict(reference_state_dict(f"keys_bubbliiiing_{backbone}.json",
                                                   centered=f"bubbliiiing_{backbone}"))
        models[backbone] = model
    return models


def letterbox(image: Image.Image, size: int) -> np.ndarray:
    """bubbliiiing's resize_image + preprocess_input: (1, 3, size, size) float32."""
    iw, ih = image.size
    w = h = size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((w - nw) // 2, (h - nh) // 2))
    return np.ascontiguousarray((np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_state_dict_keys_shapes_order_and_parameter_count(reference_models, backbone):
    model = reference_models[backbone]
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert got == key_list(f"keys_bubbliiiing_{backbone}.json")
    assert sum(p.numel() for p in model.parameters()) == BACKBONES[backbone]
    assert (model.in_channels, model.num_classes, model.training) == (3, 21, False)


@pytest.mark.parametrize("size", [512, 256])
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_center_logits_match_upstream(reference_models, backbone, size, image):
    x = letterbox(Image.open(REF / "images" / f"{image}.png").convert("RGB"), size)
    expected = np.load(REF / "expected" / "bubbliiiing_centered" / backbone / f"input{size}"
                       / f"{image}_logits_center32.npy")
    with torch.inference_mode():
        logits = reference_models[backbone](torch.from_numpy(x)).numpy()
    assert logits.shape == (1, 21, size, size)
    # The window is rows/cols (size - 32) // 2 ... + 32 (floor and ceil centring coincide: size is even).
    # Observed: <= 3.4e-6 at that offset; a window shifted by one pixel differs by 4e-3 .. 3e-2.
    top = (size - 32) // 2
    assert np.abs(logits[..., top:top + 32, top:top + 32] - expected).max() < 1e-4
    assert np.abs(logits[..., top + 1:top + 33, top + 1:top + 33] - expected).max() > 1e-3


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_size_error_suggests_the_next_multiple(reference_models, backbone):
    # The divisor and channel rules themselves: tests/models/test_models.py.
    with pytest.raises(ConfigError, match=r"multiples of 32, got 500x512\. Use --input-size 512.*512x512"):
        reference_models[backbone](torch.rand(1, 3, 500, 512))


def test_each_backbone_reads_only_its_own_keys(reference_models):
    # Each family's config read back off its own tensors: tests/models/test_models.py.
    assert vgg16_config_from_state_dict(reference_models["resnet50"].state_dict()) == {}
    assert resnet50_config_from_state_dict(reference_models["vgg16"].state_dict()) == {}


@pytest.mark.parametrize(("name", "backbone", "params"), [
    ("bubbliiiing-vgg16", "vgg16", 24_892_437),
    ("bubbliiiing-resnet50", "resnet50", 43_934_101),
])
def test_registry_entries(name, backbone, params):
    family = MODELS.get(name)
    assert (family.name, family.backbone) == (name, backbone)
    assert family.source == "bubbliiiing/unet-pytorch@8ab3732"
    assert dict(family.default_config) == {"in_channels": 3, "num_classes": 21}
    assert (family.default_processing, family.default_input_size, family.input_divisor) == (
        "bubbliiiing", (512, 512), 32)
    assert family.output_kind == "logits" and family.seed_parameters == params
