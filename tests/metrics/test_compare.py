"""Paired comparison on constructed runs whose true difference is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.metrics import scores_from_confusion
from pipeline.metrics.bootstrap import SCALAR_SCORES, BootstrapSettings, ImageStats
from pipeline.metrics.compare import compare_runs

C = 5
NAMES = ("background", "road", "car", "tree", "sign")
SETTINGS = BootstrapSettings(resamples=400, seed=11)


def baseline(n: int = 200, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Images holding every class, with large off-diagonal counts so that pixels can be moved around."""
    rng = np.random.default_rng(seed)
    matrices = rng.integers(40, 120, (n, C, C)).astype(np.int64)
    matrices[:, np.arange(C), np.arange(C)] += rng.integers(300, 900, (n, C))
    return [f"img_{i:04d}" for i in range(n)], matrices


def corrupt_class(matrices: np.ndarray, k: int, other: int, third: int) -> np.ndarray:
    """Only class k's IoU drops: TP of k become `other`, and as many (third -> other) pixels become k, so
    every row and column sum stays, and every other class keeps its TP, ground-truth and predicted pixel
    counts."""
    out = matrices.copy()
    m = np.minimum(out[:, k, k] // 3, out[:, third, other])
    out[:, k, k] -= m
    out[:, k, other] += m
    out[:, third, other] -= m
    out[:, third, k] += m
    return out


def add_noise(matrices: np.ndarray, j: int, other: int) -> np.ndarray:
    """Class j gets better on even images, worse on odd ones by the same amount: nothing changes in total."""
    out = matrices.copy()
    m = np.minimum(out[0::2, j, other], out[1::2, j, j]) // 2
    out[0::2, j, other] -= m
    out[0::2, j, j] += m
    out[1::2, j, j] -= m
    out[1::2, j, other] += m
    return out


def test_a_run_compared_with_itself_changes_nothing():
    ids, matrices = baseline()
    run = ImageStats.from_matrices(ids, matrices)
    result = compare_runs(run, run, SETTINGS, class_names=NAMES)
    for change in (*result.scores.values(), *result.per_class_iou):
        assert change.difference.estimate == 0
        assert change.difference.low <= 0 <= change.difference.high
        assert not change.changed
    assert result.changed_classes == ()
    assert result.num_images_ranked == 200 and all(c.delta == 0 for c in result.images)


def test_one_corrupted_class_is_flagged_and_noise_is_not():
    ids, matrices = baseline()
    changed = add_noise(corrupt_class(matrices, k=2, other=1, third=3), j=4, other=0)
    # The construction: class 2's TP fell; every other class's TP, label and prediction totals are unchanged.
    a_totals, b_totals = matrices.sum(0), changed.sum(0)
    assert np.array_equal(a_totals.sum(0), b_totals.sum(0))
    assert np.array_equal(a_totals.sum(1), b_totals.sum(1))
    assert [i for i in range(C) if a_totals[i, i] != b_totals[i, i]] == [2]
    a, b = ImageStats.from_matrices(ids, matrices), ImageStats.from_matrices(ids, changed)
    result = compare_runs(a, b, SETTINGS, class_names=NAMES)
    assert result.changed_classes == ("car",)
    car = result.per_class_iou[2]
    assert car.difference.high < 0 and car.b < car.a
    sign = result.per_class_iou[4]  # per-image noise that cancels out: resamples vary, the interval holds 0
    assert sign.difference.estimate == 0 and sign.difference.low < 0 < sign.difference.high
    expected_a, expected_b = scores_from_confusion(a_totals), scores_from_confusion(b_totals)
    for name in SCALAR_SCORES:
        change = result.scores[name]
        assert (change.a, change.b) == (getattr(expected_a, name), getattr(expected_b, name))
        assert change.difference.estimate == getattr(expected_b, name) - getattr(expected_a, name)
    assert result.scores["miou"].changed and result.scores["miou"].difference.high < 0
    assert result.scores["pixel_accuracy"].changed


def test_paired_intervals_use_the_same_draws_for_both_runs():
    """Slow paired reference: draw once per resample, score both runs' sums, take the difference."""
    ids, matrices = baseline(n=30, seed=4)
    changed = corrupt_class(matrices, k=1, other=0, third=2)
    settings = BootstrapSettings(resamples=50, seed=2)
    rng = np.random.default_rng(2)
    diffs = []
    for _ in range(50):
        drawn = rng.integers(0, 30, size=30)
        a, b = scores_from_confusion(matrices[drawn].sum(0)), scores_from_confusion(changed[drawn].sum(0))
        diffs.append(np.r_[b.miou - a.miou, b.per_class_iou - a.per_class_iou])
    diffs = np.array(diffs)
    a, b = ImageStats.from_matrices(ids, matrices), ImageStats.from_matrices(ids, changed)
    result = compare_runs(a, b, settings)
    got = [result.scores["miou"].difference] + [c.difference for c in result.per_class_iou]
    for column, interval in enumerate(got):
        expected = np.percentile(diffs[:, column], [2.5, 97.5])
        np.testing.assert_allclose([interval.low, interval.high], expected, rtol=1e-12, atol=1e-15)


def test_images_that_changed_most_come_first_ties_by_id():
    ids, matrices = baseline(n=12, seed=5)
    changed = matrices.copy()
    for i, share in ((7, 2), (3, 4), (9, 4)):  # image 7 loses half its class-1 TP, images 3 and 9 a quarter
        m = changed[i, 1, 1] // share
        changed[i, 1, 1] -= m
        changed[i, 1, 0] += m
    changed[9] = changed[3]  # make 3 and 9 tie exactly
    matrices[9] = matrices[3]
    result = compare_runs(ImageStats.from_matrices(ids, matrices), ImageStats.from_matrices(ids, changed),
                          BootstrapSettings(resamples=20), top_images=4)
    assert [c.id for c in result.images[:3]] == ["img_0007", "img_0003", "img_0009"]
    assert result.images[0].delta < result.images[1].delta == result.images[2].delta < 0
    assert result.images[3].delta == 0 and result.images[3].id == "img_0000"
    assert result.to_dict()["images_changed_most"][0]["id"] == "img_0007"


def test_runs_over_different_images_are_refused_naming_the_ids():
    ids, matrices = baseline(n=6)
    a = ImageStats.from_matrices(ids, matrices)
    b = ImageStats.from_matrices(ids[:4] + ["img_0099", "img_0100"], matrices)
    expected = r"only in A: 'img_0004', 'img_0005'; only in B: 'img_0099', 'img_0100'"
    with pytest.raises(ConfigError, match=expected):
        compare_runs(a, b)
    c = ImageStats.from_matrices(ids[:5], matrices[:5])
    with pytest.raises(ConfigError, match=r"6 in A, 5 in B; only in A: 'img_0005'"):
        compare_runs(a, c)
    twice = ImageStats.from_matrices(ids[:5] + ["img_0000"], matrices)
    with pytest.raises(ConfigError, match=r"Run B holds id 'img_0000' more than once"):
        compare_runs(a, twice)
    fewer_classes = ImageStats.from_matrices(ids, matrices[:, :3, :3])
    with pytest.raises(ConfigError, match="same classes"):
        compare_runs(a, fewer_classes)


def test_comparison_record_is_strict_json():
    import json

    ids, matrices = baseline(n=10)
    run = ImageStats.from_matrices(ids, matrices)
    record = json.loads(json.dumps(compare_runs(run, run, BootstrapSettings(resamples=10)).to_dict(),
                                   allow_nan=False))
    assert record["changed_classes"] == [] and record["scores"]["miou"]["difference"]["estimate"] == 0
