"""The exactness tests' near-tie helper (tests/near_ties.py): what it forgives and what it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import MODELS
from pipeline.processing import create_processing
from tests.near_ties import (
    PROBABILITY_NOISE,
    _footprint,
    compare_masks,
    compare_pinned_masks,
    pinned_margin,
    quantise,
    score_margin,
)

LOGITS = Path(__file__).parents[1] / "fixtures" / "reference" / "expected" / "milesial_centered" / "logits"


def test_flips_within_noise_are_near_ties_and_others_mismatches():
    expected = np.zeros((4, 5), np.uint8)
    margin = np.full((4, 5), 0.3)
    margin[1, 2] = 4e-7
    got = expected.copy()
    got[1, 2] = 1
    comparison = compare_masks(got, expected, margin, tolerance=1e-5, unit="logit", what="toy")
    assert [(f.y, f.x, f.expected, f.got) for f in comparison.near_ties] == [(1, 2, 0, 1)]
    assert comparison.mismatches == () and comparison.within_noise == 1
    comparison.check()
    assert "near tie (y=1, x=2) expected 0, got 1, margin 4e-07" in comparison.report()
    with pytest.raises(AssertionError, match="more than 0 near-tie flips"):
        comparison.check(max_near_ties=0)
    got[3, 4] = 2
    comparison = compare_masks(got, expected, margin, tolerance=1e-5, unit="logit")
    assert [(f.y, f.x, f.margin) for f in comparison.mismatches] == [(3, 4, 0.3)]
    with pytest.raises(AssertionError, match=r"MISMATCH \(y=3, x=4\) expected 0, got 2, margin 0.3"):
        comparison.check()


def test_score_margin():
    scores = np.array([[[0.1, 2.0]], [[0.4, 1.0]], [[0.3, -1.0]]])  # (3, 1, 2)
    np.testing.assert_allclose(score_margin(scores), [[0.1, 1.0]])
    np.testing.assert_allclose(score_margin(np.array([[[0.2, 0.9]]]), threshold=0.5), [[0.3, 0.4]])
    with pytest.raises(ValueError, match="threshold"):
        score_margin(np.zeros((1, 2, 2)))


@pytest.mark.parametrize(("src", "dst"), [((187, 250), (375, 500)), ((60, 40), (25, 33)), ((30, 20), (30,
                                                                                                      20))])
def test_footprint_covers_every_source_pixel_pil_reads(src, dst):
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, (2, *src)).astype(np.uint8)
    image = Image.frombytes("LA", src[::-1], np.ascontiguousarray(base.transpose(1, 2, 0)).tobytes())
    before = np.asarray(image.resize(dst[::-1], Image.BILINEAR))
    rows, cols = _footprint(src[0], dst[0]), _footprint(src[1], dst[1])
    for r, c in rng.integers(0, min(src), (12, 2)):
        bumped = base.copy()
        bumped[:, r, c] += 50
        image = Image.frombytes("LA", src[::-1], np.ascontiguousarray(bumped.transpose(1, 2, 0)).tobytes())
        changed = np.argwhere((np.asarray(image.resize(dst[::-1], Image.BILINEAR)) != before).any(axis=-1))
        assert len(changed) > 0
        assert all(r in rows[y] and c in cols[x] for y, x in changed)


@pytest.fixture(scope="module")
def pinned_case():
    """Upstream's img0 logits at scale 0.5, their probabilities as upstream computes them, a013c80's mask."""
    logits = np.load(LOGITS / "scale0.5" / "img0_500x375_logits.npy")[0]
    probabilities = torch.softmax(torch.from_numpy(logits)[None], dim=1)[0].numpy()
    proc = create_processing("milesial-a013c80", family=MODELS.get("milesial"), num_classes=2, in_channels=3,
                             scale=0.5)
    meta = {"mode": proc.name, "height": 375, "width": 500, "net_height": 187, "net_width": 250}
    return logits, probabilities, proc, meta


def test_kernel_noise_gives_only_reachable_near_ties(pinned_case):
    """Logits moved by +-3e-6 (what another CPU or thread count does at worst): every flip is explained."""
    logits, probabilities, proc, meta = pinned_case
    expected = proc.finish(logits, meta)
    flips = 0
    for seed in range(4):
        noisy = logits + np.random.default_rng(seed).uniform(-3e-6, 3e-6, logits.shape).astype(np.float32)
        comparison = compare_pinned_masks(proc.finish(noisy, meta), expected, probabilities,
                                          what=f"seed {seed}")
        print(comparison.report())
        assert comparison.mismatches == ()
        flips += len(comparison.near_ties)
        assert all(f.margin <= PROBABILITY_NOISE for f in comparison.near_ties)
    assert flips > 0  # the path is exercised (9 flips over these seeds, 0-5 per image)


def test_flips_no_byte_change_can_explain_are_mismatches(pinned_case):
    logits, probabilities, proc, meta = pinned_case
    expected = proc.finish(logits, meta)
    margin = pinned_margin(probabilities, expected.shape)
    resized = np.asarray(Image.frombytes("LA", (250, 187), np.ascontiguousarray(
        quantise(probabilities).transpose(1, 2, 0)).tobytes()).resize((500, 375), Image.BILINEAR)).astype(int)
    gap = np.abs(resized[..., 0] - resized[..., 1])
    fragile_but_clear = np.argwhere((margin <= PROBABILITY_NOISE) & (gap > 20))[0]  # a byte may move, not 20
    clear = np.argwhere(margin > 1e-3)[0]
    got = expected.copy()
    for y, x in (fragile_but_clear, clear):
        got[y, x] = 1 - got[y, x]
    comparison = compare_pinned_masks(got, expected, probabilities)
    assert comparison.near_ties == ()
    assert sorted((f.y, f.x) for f in comparison.mismatches) == sorted(
        [tuple(fragile_but_clear), tuple(clear)])
