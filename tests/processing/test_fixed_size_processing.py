"""The fixed-size modes: resize, model-res (scored at network size) and zhixuhao."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.models import MODELS
from pipeline.processing import create_processing
from tests.near_ties import LOGIT_NOISE, PROBABILITY_NOISE, compare_masks, score_margin
from tests.processing.numpy_reference import bilinear, sigmoid, smooth_scores

MILESIAL = MODELS.get("milesial")
ZHIXUHAO = MODELS.get("zhixuhao")


def rgb_image(width: int = 90, height: int = 70, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make(mode: str, family=MILESIAL, num_classes: int = 3, in_channels: int = 3, **options):
    return create_processing(mode, family=family, num_classes=num_classes, in_channels=in_channels, **options)


@pytest.mark.parametrize("mode", ["resize", "model-res"])
@pytest.mark.parametrize(("in_channels", "pil_mode"), [(3, "RGB"), (1, "L")])
def test_prepare_converts_and_resizes_bilinear_to_h_w(mode, in_channels, pil_mode):
    image = rgb_image().convert("RGBA")
    proc = make(mode, in_channels=in_channels, input_size=(48, 64))
    prepared = proc.prepare(image)
    expected = np.asarray(image.convert(pil_mode).resize((64, 48), Image.BILINEAR))
    expected = expected.reshape(48, 64, in_channels)
    assert np.array_equal(prepared.image, expected)
    assert proc.network_size(prepared.meta) == (48, 64)


def test_default_input_size_is_the_familys():
    assert make("resize").input_size == MILESIAL.default_input_size
    assert make("model-res", input_size=96).input_size == (96, 96)


def test_resize_finish_resizes_logits_back_and_takes_the_argmax():
    proc = make("resize", num_classes=4, input_size=(32, 48))
    logits = smooth_scores(4, 32, 48, seed=2) * 2
    meta = proc.prepare(rgb_image(90, 70)).meta
    classes = proc.finish(logits, meta)
    resized = bilinear(logits, (70, 90))
    reference = np.argmax(resized, axis=0)
    assert classes.shape == (70, 90) and proc.output_size(meta) == (70, 90)
    compare_masks(classes, reference, score_margin(resized), tolerance=LOGIT_NOISE, unit="logit",
                  what="resize").check()
    label = np.zeros((70, 90), np.uint8)
    assert np.array_equal(proc.prepare_label(label, meta), label)


def test_model_res_decides_at_network_size_and_resizes_labels_nearest():
    proc = make("model-res", num_classes=4, input_size=(32, 48))
    logits = smooth_scores(4, 32, 48, seed=4)
    meta = proc.prepare(rgb_image(90, 70)).meta
    assert np.array_equal(proc.finish(logits, meta), np.argmax(logits, axis=0))
    assert proc.output_size(meta) == (32, 48)
    label = np.random.default_rng(3).integers(0, 4, (70, 90)).astype(np.uint8)
    label[::7] = 255  # ignore rows survive as 255
    out = proc.prepare_label(label, meta)
    # PIL NEAREST picks source pixel floor((d + 0.5) * src / dst).
    rows = np.floor((np.arange(32) + 0.5) * 70 / 32).astype(int)
    cols = np.floor((np.arange(48) + 0.5) * 90 / 48).astype(int)
    assert out.shape == (32, 48) and out.dtype == np.uint8
    assert np.array_equal(out, label[rows][:, cols])
    assert set(np.unique(out)) <= set(np.unique(label))


@pytest.mark.parametrize("mode", ["resize", "model-res"])
def test_single_channel_logits_use_sigmoid_and_threshold(mode):
    proc = make(mode, num_classes=1, in_channels=1, input_size=(16, 16), threshold=0.7)
    logits = smooth_scores(1, 16, 16, seed=8) * 2
    meta = proc.prepare(Image.new("L", (40, 24))).meta
    classes = proc.finish(logits, meta)
    scores = logits if mode == "model-res" else bilinear(logits, (24, 40))
    assert proc.num_classes_out == 2
    compare_masks(classes, sigmoid(scores[0]) > 0.7, score_margin(scores, threshold=np.log(0.7 / 0.3)),
                  tolerance=LOGIT_NOISE, unit="logit", what=mode).check()


def test_zhixuhao_greyscale_probabilities_resized_back_and_thresholded():
    proc = make("upstream", family=ZHIXUHAO, num_classes=1, in_channels=1)
    assert proc.name == "zhixuhao" and proc.input_size == (256, 256) and proc.num_classes_out == 2
    image = rgb_image(512, 512)
    prepared = proc.prepare(image)
    expected = np.asarray(image.convert("L").resize((256, 256), Image.BILINEAR))
    assert np.array_equal(prepared.image[:, :, 0], expected)
    probs = 1 / (1 + np.exp(-smooth_scores(1, 256, 256, seed=9).astype(np.float64)))
    classes = proc.finish(probs.astype(np.float32), prepared.meta)
    resized = bilinear(probs, (512, 512))
    assert classes.shape == (512, 512)
    compare_masks(classes, resized[0] > 0.5, score_margin(resized, threshold=0.5),
                  tolerance=PROBABILITY_NOISE,
                  unit="probability", what="zhixuhao").check()
    png = proc.upstream_png(classes)
    assert png.mode == "L" and set(np.unique(np.asarray(png))) == {0, 255}


def test_zhixuhao_options():
    with pytest.raises(ConfigError, match="multiples of 16.*--input-size 256x256"):
        make("zhixuhao", family=ZHIXUHAO, num_classes=1, in_channels=1, input_size=(250, 250))
    with pytest.raises(ConfigError, match="greyscale"):
        make("zhixuhao", num_classes=1, in_channels=3)
    assert make("zhixuhao", num_classes=1, in_channels=1).input_size == (256, 256)  # its own default


def test_channel_and_bit_depth_rules():
    with pytest.raises(ConfigError, match="takes 4 channels.*milesial-a013c80"):
        make("resize", in_channels=4)
    with pytest.raises(InputError, match="16/32-bit"):
        make("resize").prepare(Image.fromarray(np.full((8, 8), 300, dtype=np.uint16)))
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    assert make("resize", input_size=8).prepare(palette).image.shape == (8, 8, 3)
