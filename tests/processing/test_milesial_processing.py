"""milesial predict.py paths against the reference fixtures (0 differing pixels) and the image-mode rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.models import MODELS
from pipeline.processing import create_processing
from tests.near_ties import LOGIT_NOISE, compare_masks, compare_pinned_masks, score_margin
from tests.processing.numpy_reference import bilinear, sigmoid, smooth_scores, softmax

REF = Path(__file__).parents[1] / "fixtures" / "reference"
EXPECTED = REF / "expected" / "milesial_centered"
IMAGES = ["img0_500x375", "img1_333x500"]
COMMITS = {"milesial-a013c80": "pinned_a013c80", "milesial-21d7850": "head_21d7850"}
FAMILY = MODELS.get("milesial")


def milesial(mode: str = "milesial-a013c80", num_classes: int = 2, in_channels: int = 3, **options):
    return create_processing(mode, family=FAMILY, num_classes=num_classes, in_channels=in_channels, **options)


@pytest.mark.parametrize("scale", ["0.5", "1.0"])
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("mode", list(COMMITS))
def test_reference_logits_give_the_upstream_mask_and_png(mode, scale, image):
    proc = milesial(mode, scale=float(scale))
    pil = Image.open(REF / "images" / f"{image}.png")
    prepared = proc.prepare(pil)
    width, height = pil.size
    assert prepared.image.shape == (int(height * float(scale)), int(width * float(scale)), 3)
    logits = np.load(EXPECTED / "logits" / f"scale{scale}" / f"{image}_logits.npy")[0]
    assert logits.shape[1:] == prepared.image.shape[:2]

    classes = proc.finish(logits, prepared.meta)
    expected = np.asarray(Image.open(EXPECTED / COMMITS[mode] / f"scale{scale}" / f"{image}_classes.png"))
    assert classes.dtype == np.uint8 and classes.shape == (height, width)
    # Upstream's own logits: only the float32 softmax/resize kernels of this CPU can differ (~1e-7).
    near_tie_check(mode, logits, classes, expected, f"{image} scale {scale} {mode}")

    png = proc.upstream_png(expected)
    upstream = Image.open(EXPECTED / COMMITS[mode] / f"scale{scale}" / f"{image}_OUT.png")
    assert png.mode == upstream.mode and png.size == upstream.size
    assert np.array_equal(np.asarray(png), np.asarray(upstream))


def near_tie_check(mode: str, logits: np.ndarray, classes: np.ndarray, expected: np.ndarray,
                   what: str) -> None:
    """`classes` equals upstream's `expected` wherever it decided above float noise (tests/near_ties.py)."""
    if mode == "milesial-a013c80":
        probabilities = torch.softmax(torch.from_numpy(logits)[None], dim=1)[0].numpy()  # as upstream
        comparison = compare_pinned_masks(classes, expected, probabilities, what=what)
    else:
        comparison = compare_masks(classes, expected, score_margin(bilinear(logits, expected.shape)),
                                   tolerance=LOGIT_NOISE, unit="logit", what=what)
    comparison.check()


@pytest.mark.parametrize("image", IMAGES)
def test_prepare_is_a_bicubic_resize_divided_by_255(image):
    proc = milesial(scale=0.5)
    pil = Image.open(REF / "images" / f"{image}.png")
    prepared = proc.prepare(pil)
    upstream = np.asarray(pil.resize((int(0.5 * pil.size[0]), int(0.5 * pil.size[1])), Image.BICUBIC))
    x = (upstream.transpose(2, 0, 1) / 255).astype(np.float32)  # predict.py: float64 / 255, then .float()
    assert np.array_equal(proc.to_network_input(prepared.image[None])[0], x)
    assert (prepared.meta["height"], prepared.meta["width"]) == pil.size[::-1]


def test_pinned_two_classes_need_the_premultiplied_la_resize():
    # The fixture is only matched through PIL's 'LA' mode: resizing the two channels as separate 'L' images
    # (no premultiplied alpha) gives a different mask. This pins why the implementation goes through PIL.
    proc = milesial(scale=0.5)
    logits = np.load(EXPECTED / "logits" / "scale0.5" / "img0_500x375_logits.npy")[0]
    expected = np.asarray(Image.open(EXPECTED / "pinned_a013c80" / "scale0.5" / "img0_500x375_classes.png"))
    e = np.exp(logits.astype(np.float64) - logits.max(axis=0))
    quantised = ((e / e.sum(axis=0)).astype(np.float32) * np.float32(255)).astype(np.uint8)
    separate = [np.asarray(Image.fromarray(q).resize((500, 375), Image.BILINEAR)) for q in quantised]
    naive = (separate[1] > separate[0]).astype(np.uint8)
    assert int((naive != expected).sum()) > 0
    meta = {"mode": proc.name, "height": 375, "width": 500, "net_height": 187, "net_width": 250}
    near_tie_check(proc.name, logits, proc.finish(logits, meta), expected, "img0_500x375 scale 0.5")


def _pinned_reference(logits: np.ndarray, size_wh: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """a013c80 written out: probabilities, x*255 truncated, PIL bilinear in ToPILImage's mode, decide."""
    if logits.shape[0] == 1:
        probs = sigmoid(logits)
    else:
        e = np.exp(logits.astype(np.float64) - logits.max(axis=0))
        probs = e / e.sum(axis=0)
    q = np.ascontiguousarray((probs.astype(np.float32) * np.float32(255)).astype(np.uint8).transpose(1, 2, 0))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[q.shape[2]]
    image = Image.frombytes(mode, (q.shape[1], q.shape[0]), q.tobytes())
    out = np.asarray(image.resize(size_wh, Image.BILINEAR)).reshape(size_wh[1], size_wh[0], q.shape[2])
    if mode == "L":
        return (out[:, :, 0].astype(np.float32) / 255 > threshold).astype(np.uint8)
    return np.argmax(out, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pinned_other_channel_counts_follow_topilimage(channels):
    logits = smooth_scores(channels, 40, 60, seed=channels) * 3
    proc = milesial(num_classes=channels, scale=0.5)
    meta = {"mode": proc.name, "height": 81, "width": 121, "net_height": 40, "net_width": 60}
    classes = proc.finish(logits, meta)
    # torch float32 vs float64 numpy may flip a byte on a truncation edge: near ties only (0 observed).
    probabilities = (sigmoid(logits) if channels == 1 else softmax(logits)).astype(np.float32)
    compare_pinned_masks(classes, _pinned_reference(logits, (121, 81)), probabilities,
                         what=f"{channels} channel(s)").check()
    assert proc.num_classes_out == (2 if channels == 1 else channels)


def test_pinned_more_than_four_classes_resizes_each_channel():
    logits = smooth_scores(6, 30, 20, seed=6) * 4
    proc = milesial(num_classes=6, scale=1.0)
    meta = {"mode": proc.name, "height": 45, "width": 30, "net_height": 30, "net_width": 20}
    classes = proc.finish(logits, meta)
    e = np.exp(logits.astype(np.float64) - logits.max(axis=0))
    q = ((e / e.sum(axis=0)).astype(np.float32) * 255).astype(np.uint8)
    per_channel = np.stack([np.asarray(Image.fromarray(c).resize((30, 45), Image.BILINEAR)) for c in q])
    expected = np.argmax(per_channel, axis=0)
    compare_pinned_masks(classes, expected, softmax(logits).astype(np.float32), what="6 classes").check()
    assert classes.shape == (45, 30) and classes.max() <= 5


def test_head_single_channel_thresholds_the_resized_logits():
    logits = smooth_scores(1, 33, 47, seed=1) * 2
    for threshold in (0.3, 0.5, 0.8):
        proc = milesial("milesial-21d7850", num_classes=1, scale=0.5, threshold=threshold)
        meta = {"mode": proc.name, "height": 66, "width": 95, "net_height": 33, "net_width": 47}
        classes = proc.finish(logits, meta)
        resized = bilinear(logits, (66, 95))
        reference = sigmoid(resized[0]) > threshold
        margin = score_margin(resized, threshold=np.log(threshold / (1 - threshold)))  # in logits
        compare_masks(classes, reference, margin, tolerance=LOGIT_NOISE, unit="logit",
                      what=f"threshold {threshold}").check()
        assert proc.num_classes_out == 2
        assert np.array_equal(np.asarray(proc.upstream_png(classes)), classes.astype(bool))


def test_pinned_png_values():
    classes = np.array([[0, 1], [2, 20]], dtype=np.uint8)
    png = milesial(num_classes=21).upstream_png(classes)
    assert png.mode == "L" and np.asarray(png).tolist() == [[0, 12], [24, 242]]  # class * 255 // 21
    single = milesial(num_classes=1).upstream_png(np.array([[0, 1]], dtype=np.uint8))
    assert single.mode == "L" and np.asarray(single).tolist() == [[0, 255]]


def test_head_png_uses_mask_values():
    proc = milesial("milesial-21d7850", num_classes=3)
    classes = np.array([[0, 1, 2]], dtype=np.uint8)
    default = proc.upstream_png(classes[:, :2])
    assert default.mode == "1" and np.asarray(default).tolist() == [[False, True]]
    grey = proc.upstream_png(classes, [0, 127, 255])
    assert grey.mode == "L" and np.asarray(grey).tolist() == [[0, 127, 255]]
    colour = proc.upstream_png(classes, [[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    assert colour.mode == "RGB" and np.asarray(colour).tolist() == [[[0, 0, 0], [255, 0, 0], [0, 0, 255]]]
    with pytest.raises(ConfigError, match="0..255"):
        proc.upstream_png(classes, [0, 1, 300])


def _image(mode: str, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
    return rgb.convert(mode)


@pytest.mark.parametrize(("mode", "in_channels", "message"), [
    ("L", 3, "1 channel.*takes 3.*Convert it to RGB"),
    ("RGB", 1, "3 channel.*takes 1.*Convert it to L"),
    ("RGBA", 3, "4 channel.*--processing resize"),
    ("LA", 3, "2 channel"),
    ("P", 3, "palette.*Convert it to RGB"),
    ("CMYK", 3, "'CMYK'.*not RGB"),
    ("YCbCr", 3, "'YCbCr'.*not RGB"),
    ("I;16", 1, "16/32-bit.*8-bit"),
    ("1", 1, "1-bit.*milesial-21d7850"),
])
def test_unusable_images_raise_input_error(mode, in_channels, message):
    image = _image(mode)
    with pytest.raises(InputError, match=message):
        milesial(in_channels=in_channels).prepare(image)


@pytest.mark.parametrize(("mode", "in_channels"), [("L", 1), ("RGB", 3), ("LA", 2), ("RGBA", 4)])
def test_file_channels_are_kept(mode, in_channels):
    image = _image(mode)
    for name in COMMITS:
        prepared = milesial(name, in_channels=in_channels, scale=0.5).prepare(image)
        expected = np.asarray(image.resize((20, 15), Image.BICUBIC)).reshape(15, 20, in_channels)
        assert np.array_equal(prepared.image, expected)


def test_head_feeds_zero_one_images_undivided():
    # 21d7850 divides by 255 only if a value is > 1: a 0/1 image is fed as 0.0/1.0, a013c80 feeds 0 and 1/255.
    values = (np.indices((20, 30)).sum(axis=0) % 2).astype(np.uint8)
    image = Image.fromarray(values)
    head = milesial("milesial-21d7850", in_channels=1, scale=1.0)
    x = head.to_network_input(head.prepare(image).image[None])[0, 0]
    assert np.array_equal(x, values.astype(np.float32))
    pinned = milesial(in_channels=1, scale=1.0)
    x = pinned.to_network_input(pinned.prepare(image).image[None])[0, 0]
    assert np.array_equal(x, (values / 255).astype(np.float32))
    one_bit = head.prepare(image.point(lambda v: 255 * v).convert("1")).image[:, :, 0]
    assert np.array_equal(one_bit, values * 255)


def test_scale_rules():
    tiny = Image.new("RGB", (3, 2))
    with pytest.raises(InputError, match="no pixels.*larger --scale"):
        milesial(scale=0.4).prepare(tiny)
    assert milesial(scale=1.5).prepare(tiny).image.shape == (3, 4, 3)
    assert milesial().scale == 0.5  # predict.py's default
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--scale"):
            milesial(scale=bad)
