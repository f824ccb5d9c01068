"""Image -> prepare -> network -> finish, against the masks the public code wrote (reference fixtures).

This is how the pipeline calls the layer: `prepare` in a CPU task, `to_network_input` + the network in the
actor, then `finish` on that image's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import MODELS, create_model
from pipeline.processing import Processing, create_processing
from tests.reference_weights import reference_state_dict

REF = Path(__file__).parents[1] / "fixtures" / "reference"
IMAGES = ["img0_500x375", "img1_333x500"]


def predict(proc: Processing, model: torch.nn.Module, image: Image.Image) -> tuple[np.ndarray, dict]:
    prepared = proc.prepare(image)
    x = torch.from_numpy(proc.to_network_input(prepared.image[None]))
    with torch.inference_mode():
        output = model(x).numpy()[0]
    return output, prepared.meta


@pytest.fixture(scope="module")
def milesial_unet() -> torch.nn.Module:
    model = create_model("milesial")
    model.load_state_dict(reference_state_dict("keys_milesial.json", centered="milesial"))
    return model.eval()


@pytest.fixture(scope="module")
def bubbliiiing_nets() -> dict[str, torch.nn.Module]:
    nets = {}
    for backbone in ("vgg16", "resnet50"):
        model = create_model(f"bubbliiiing-{backbone}")
        model.load_state_dict(reference_state_dict(f"keys_bubbliiiing_{backbone}.json",
                                                   centered=f"bubbliiiing_{backbone}"))
        nets[backbone] = model.eval()
    return nets


@pytest.mark.parametrize("scale", ["0.5", "1.0"])
@pytest.mark.parametrize("image", IMAGES)
def test_milesial_end_to_end_masks_are_exact(milesial_unet, scale, image):
    family = MODELS.get("milesial")
    pil = Image.open(REF / "images" / f"{image}.png")
    pinned = create_processing("upstream", family=family, num_classes=2, in_channels=3, scale=float(scale))
    head = create_processing("milesial-21d7850", family=family, num_classes=2, in_channels=3,
                             scale=float(scale))
    output, meta = predict(pinned, milesial_unet, pil)
    for proc, folder in ((pinned, "pinned_a013c80"), (head, "head_21d7850")):
        expected = REF / "expected" / "milesial_centered" / folder / f"scale{scale}"
        classes = proc.finish(output, meta)
        assert int((classes != np.asarray(Image.open(expected / f"{image}_classes.png"))).sum()) == 0
        upstream = Image.open(expected / f"{image}_OUT.png")
        png = proc.upstream_png(classes)
        assert png.mode == upstream.mode and np.array_equal(np.asarray(png), np.asarray(upstream))


@pytest.mark.parametrize("input_size", [256, 512])
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_bubbliiiing_end_to_end_masks(bubbliiiing_nets, backbone, image, input_size):
    proc = create_processing("upstream", family=MODELS.get(f"bubbliiiing-{backbone}"), num_classes=21,
                             in_channels=3, input_size=(input_size, input_size))
    pil = Image.open(REF / "images" / f"{image}.png")
    output, meta = predict(proc, bubbliiiing_nets[backbone], pil)
    folder = REF / "expected" / "bubbliiiing_centered" / backbone / f"input{input_size}"
    center = np.load(folder / f"{image}_logits_center32.npy")[0]
    h, w = output.shape[1:]
    assert np.abs(output[:, h // 2 - 16:h // 2 + 16, w // 2 - 16:w // 2 + 16] - center).max() < 1e-4
    classes = proc.finish(output, meta)
    expected = np.asarray(Image.open(folder / f"{image}_classes.png"))
    assert classes.shape == expected.shape
    # torch's bilinear stands in for OpenCV's (~1e-6 apart) on logits ~3e-6 from upstream's: 0-9 pixels seen.
    assert (classes != expected).mean() <= 1e-4
    colour = np.asarray(proc.visualise(pil, classes, mix_type=1))
    same = classes == expected
    assert np.array_equal(colour[same], np.asarray(Image.open(folder / f"{image}_color.png"))[same])
