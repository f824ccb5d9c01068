"""bubbliiiing's get_miou_png path: letterbox geometry, post-processing vs a numpy reference, the pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.models import MODELS
from pipeline.processing import create_processing, letterbox_geometry, ops
from tests.near_ties import PROBABILITY_NOISE, compare_masks, score_margin
from tests.processing.numpy_reference import bilinear, smooth_scores, softmax

REF = Path(__file__).parents[1] / "fixtures" / "reference"
EXPECTED = REF / "expected" / "bubbliiiing_centered"
IMAGES = ["img0_500x375", "img1_333x500"]
FAMILY = MODELS.get("bubbliiiing-vgg16")


def bubbliiiing(num_classes: int = 21, **options):
    return create_processing("bubbliiiing", family=FAMILY, num_classes=num_classes, in_channels=3, **options)


@pytest.mark.parametrize(("size", "input_size", "box"), [
    ((333, 500), (512, 512), (86, 0, 340, 512)),   # scale 1.024 -> int(333 * 1.024) = 340
    ((500, 375), (512, 512), (0, 64, 512, 384)),
    ((333, 500), (256, 256), (43, 0, 170, 256)),
    ((500, 375), (256, 256), (0, 32, 256, 192)),
    ((100, 100), (256, 512), (128, 0, 256, 256)),  # (h, w) = (256, 512): centred horizontally
    ((1918, 1280), (512, 512), (0, 85, 512, 341)),
])
def test_letterbox_geometry(size, input_size, box):
    assert letterbox_geometry(size, input_size) == box
    h, w = input_size
    scale = min(w / size[0], h / size[1])
    assert box[2:] == (int(size[0] * scale), int(size[1] * scale))


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("input_size", [512, 256])
def test_prepare_letterboxes_on_grey(image, input_size):
    pil = Image.open(REF / "images" / f"{image}.png")
    proc = bubbliiiing(input_size=(input_size, input_size))
    prepared = proc.prepare(pil)
    left, top, nw, nh = prepared.meta["box"]
    assert prepared.image.shape == (input_size, input_size, 3) and prepared.image.dtype == np.uint8
    inner = prepared.image[top:top + nh, left:left + nw]
    assert np.array_equal(inner, np.asarray(pil.resize((nw, nh), Image.BICUBIC)))
    border = np.ones(prepared.image.shape[:2], dtype=bool)
    border[top:top + nh, left:left + nw] = False
    assert border.any() and np.all(prepared.image[border] == 128)
    assert (prepared.meta["height"], prepared.meta["width"]) == pil.size[::-1]
    assert proc.network_size(prepared.meta) == (input_size, input_size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finish_matches_a_numpy_reference(seed):
    # Softmax, crop the letterbox, bilinear-resize the probabilities (half-pixel, no antialias), arg-max.
    proc = bubbliiiing(input_size=(256, 256))
    size = [(333, 500), (500, 375), (640, 200)][seed]
    left, top, nw, nh = letterbox_geometry(size, (256, 256))
    meta = {"mode": "bubbliiiing", "width": size[0], "height": size[1], "net_height": 256, "net_width": 256,
            "box": [left, top, nw, nh]}
    logits = smooth_scores(21, 256, 256, seed) * 3
    classes = proc.finish(logits, meta)
    probs = bilinear(softmax(logits)[:, top:top + nh, left:left + nw], (size[1], size[0]))
    reference = np.argmax(probs, axis=0)
    assert classes.shape == (size[1], size[0]) and classes.dtype == np.uint8
    # float32 vs float64 may flip near ties only (0 observed)
    compare_masks(classes, reference, score_margin(probs), tolerance=PROBABILITY_NOISE, unit="probability",
                  what=f"seed {seed}").check()
    # Resizing logits instead of probabilities (a tempting shortcut) is a different answer.
    from_logits = np.argmax(bilinear(logits[:, top:top + nh, left:left + nw], (size[1], size[0])), axis=0)
    assert (from_logits != reference).any()


def test_resize_is_half_pixel_bilinear_without_antialias():
    x = smooth_scores(3, 37, 53, seed=5)
    for size in [(90, 20), (11, 17), (37, 53), (100, 130)]:
        assert np.abs(ops.resize_bilinear(x, size).numpy() - bilinear(x, size)).max() < 2e-6


def test_argmax_takes_the_first_index_on_ties():
    scores = np.zeros((5, 2, 3), dtype=np.float32)
    scores[2, 0, 0] = scores[4, 0, 0] = 1.0
    scores[1:, 1, 2] = 7.0
    classes = ops.argmax_channels(scores)
    assert classes.tolist() == [[2, 0, 0], [0, 0, 1]]
    assert np.array_equal(classes, np.argmax(scores, axis=0))
    rng = np.random.default_rng(0)
    quantised = rng.integers(0, 4, (21, 50, 60)).astype(np.float32)  # many ties
    assert np.array_equal(ops.argmax_channels(quantised), np.argmax(quantised, axis=0))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_any_8_bit_mode_is_converted_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    prepared = bubbliiiing(input_size=(64, 64)).prepare(image)
    left, top, nw, nh = prepared.meta["box"]
    expected = np.asarray(image.convert("RGB").resize((nw, nh), Image.BICUBIC))
    assert np.array_equal(prepared.image[top:top + nh, left:left + nw], expected)


def test_high_bit_depth_and_degenerate_images_are_rejected():
    with pytest.raises(InputError, match="8-bit"):
        bubbliiiing().prepare(Image.fromarray(np.full((20, 20), 4000, dtype=np.uint16)))
    with pytest.raises(InputError, match="aspect"):
        bubbliiiing(input_size=(32, 32)).prepare(Image.new("RGB", (2000, 1)))


def test_options():
    assert bubbliiiing().input_size == (512, 512)
    with pytest.raises(ConfigError, match="multiples of 32.*--input-size 512x512"):
        bubbliiiing(input_size=(500, 500))
    with pytest.raises(ConfigError, match="--scale does not apply.*--input-size"):
        bubbliiiing(scale=0.5)
    with pytest.raises(ConfigError, match="RGB.*resize or model-res"):
        create_processing("bubbliiiing", family=FAMILY, num_classes=21, in_channels=1)


def test_single_channel_output_is_thresholded():
    proc = bubbliiiing(num_classes=1, input_size=(32, 32), threshold=0.5)
    logits = smooth_scores(1, 32, 32, seed=3)
    meta = {"mode": "bubbliiiing", "width": 64, "height": 32, "net_height": 32, "net_width": 32,
            "box": [0, 8, 32, 16]}
    classes = proc.finish(logits, meta)
    probabilities = bilinear(1 / (1 + np.exp(-logits[:, 8:24].astype(np.float64))), (32, 64))
    compare_masks(classes, probabilities[0] > 0.5, score_margin(probabilities, threshold=0.5),
                  tolerance=PROBABILITY_NOISE, unit="probability", what="one channel").check()
    assert proc.num_classes_out == 2


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
@pytest.mark.parametrize("input_size", [512, 256])
@pytest.mark.parametrize("image", IMAGES)
def test_upstream_png_is_the_class_map(backbone, input_size, image):
    """get_miou_png saves the class indices as an 'L' PNG (`--png-values upstream`)."""
    classes = np.asarray(Image.open(EXPECTED / backbone / f"input{input_size}" / f"{image}_classes.png"))
    png = bubbliiiing().upstream_png(classes)
    assert png.mode == "L" and np.array_equal(np.asarray(png), classes)
