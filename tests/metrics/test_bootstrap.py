"""The vectorised bootstrap against the slow loop that defines it (same seed, equal results)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pipeline.errors import ConfigError, InputError
from pipeline.metrics import scores_from_confusion
from pipeline.metrics.bootstrap import (
    SCALAR_SCORES,
    BootstrapSettings,
    ImageStats,
    bootstrap_scores,
    groups_from_ids,
    image_miou,
    image_stats,
    resample_scores,
    resampled_sums,
    scores_from_stats,
)
from pipeline.metrics.confusion import image_scores

RTOL = 1e-12  # the counts are exact; a mean over classes may differ in its last bit (summation grouping)


def random_matrices(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Per-image matrices where each image holds a few classes; the last class occurs in two images only, and
    one image has no scored pixel at all (every label ignored)."""
    out = np.zeros((n, c, c), np.int64)
    for i in range(n):
        in_label = rng.random(c) < 0.5
        in_label[0] = True
        in_label[c - 1] = i in (3, 11)
        in_pred = in_label | (rng.random(c) < 0.15)
        in_pred[c - 1] = i in (3, 11, 17)
        m = rng.integers(0, 40, (c, c)) * np.outer(in_label, in_pred)
        m[np.diag_indices(c)] += rng.integers(50, 400, c) * (in_label & in_pred)
        out[i] = m
    out[7] = 0
    return out


def slow_bootstrap(matrices: np.ndarray, members: list[list[int]], resamples: int, seed: int) -> list:
    """The definition: draw groups with replacement, sum their images' matrices, score with scores.py."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        matrix = np.zeros(matrices.shape[1:], np.int64)
        for g in drawn:
            for i in members[g]:
                matrix += matrices[i]
        samples.append(scores_from_confusion(matrix))
    return samples


def reference_percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(7)
    matrices = random_matrices(rng, 40, 5)
    ids = [f"seq{i % 4}_{i:03d}" for i in range(40)]
    return ids, matrices, ImageStats.from_matrices(ids, matrices)


def test_image_stats_hold_what_every_score_needs():
    rng = np.random.default_rng(0)
    for c in (1, 2, 5, 21):
        for matrix in (rng.integers(0, 100, (c, c)), np.zeros((c, c), np.int64)):
            expected = scores_from_confusion(matrix)
            got = scores_from_stats(image_stats(matrix))
            for name in SCALAR_SCORES:
                np.testing.assert_allclose(got[name], getattr(expected, name), rtol=RTOL, equal_nan=True)
            np.testing.assert_allclose(got["per_class_iou"], expected.per_class_iou, rtol=RTOL,
                                       equal_nan=True)


def test_image_miou_is_the_sinks_per_image_iou(run):
    _, matrices, _ = run
    expected = np.array([image_scores(m)[1] for m in matrices])
    np.testing.assert_allclose(image_miou(image_stats(matrices)), expected, rtol=RTOL, equal_nan=True)


@pytest.mark.parametrize("chunk_resamples", [1, 7, None])
@pytest.mark.parametrize("grouped", [False, True])
def test_equals_the_slow_loop(run, grouped, chunk_resamples):
    ids, matrices, images = run
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    sorted_matrices, sorted_ids = matrices[order], [ids[i] for i in order]
    if grouped:
        groups = groups_from_ids(images.ids, r"^(seq\d)_")
        keys = sorted({i.split("_")[0] for i in ids})
        members = [[k for k, i in enumerate(sorted_ids) if i.startswith(key + "_")] for key in keys]
    else:
        groups, members = None, [[k] for k in range(len(ids))]
    g = len(members)
    chunk_bytes = 16 * g * chunk_resamples if chunk_resamples else BootstrapSettings().chunk_bytes
    settings = BootstrapSettings(resamples=60, seed=123, chunk_bytes=chunk_bytes)
    reference = slow_bootstrap(sorted_matrices, members, 60, 123)
    got = resample_scores(images.stats, groups, settings)
    for name in SCALAR_SCORES:
        np.testing.assert_allclose(got[name], [getattr(s, name) for s in reference], rtol=RTOL,
                                   equal_nan=True)
    np.testing.assert_allclose(got["per_class_iou"], [s.per_class_iou for s in reference], rtol=RTOL,
                               equal_nan=True)
    assert np.isnan(got["per_class_iou"][:, 4]).any(), "the rare class should be missing from some resamples"

    result = bootstrap_scores(images, settings, groups)
    estimate = scores_from_confusion(matrices.sum(0))
    for name in SCALAR_SCORES:
        interval = result.scores[name]
        assert interval.estimate == getattr(estimate, name)  # exactly the number metrics.json reports
        low, high = reference_percentiles(np.array([getattr(s, name) for s in reference]), 0.95)
        np.testing.assert_allclose([interval.low, interval.high], [low, high], rtol=RTOL)
        assert interval.resamples == 60
    for c, interval in enumerate(result.per_class_iou):
        values = np.array([s.per_class_iou[c] for s in reference])
        np.testing.assert_allclose([interval.low, interval.high], reference_percentiles(values, 0.95),
                                   rtol=RTOL)
        assert interval.resamples == int((~np.isnan(values)).sum())
    assert (result.num_images, result.num_groups) == (40, g)


def test_seeded_results_are_reproducible_and_independent_of_chunks_and_threads(run):
    _, _, images = run
    base = resample_scores(images.stats, None, BootstrapSettings(resamples=200, seed=5))
    for settings in (BootstrapSettings(resamples=200, seed=5, chunk_bytes=16 * 40 * 13),
                     BootstrapSettings(resamples=200, seed=5, chunk_bytes=1)):
        again = resample_scores(images.stats, None, settings)
        for name, values in base.items():
            np.testing.assert_array_equal(again[name], values)
    with threadpool_limits(1):
        single = resample_scores(images.stats, None, BootstrapSettings(resamples=200, seed=5))
    for name, values in base.items():
        np.testing.assert_array_equal(single[name], values)
    other = resample_scores(images.stats, None, BootstrapSettings(resamples=200, seed=6))
    assert not np.array_equal(other["miou"], base["miou"])
    first = bootstrap_scores(images, BootstrapSettings(resamples=200, seed=5)).to_dict()
    assert first == bootstrap_scores(images, BootstrapSettings(resamples=200, seed=5)).to_dict()


def test_order_of_the_input_images_does_not_matter(run):
    ids, matrices, images = run
    shuffled = np.random.default_rng(1).permutation(len(ids))
    again = ImageStats.from_matrices([ids[i] for i in shuffled], matrices[shuffled])
    settings = BootstrapSettings(resamples=50)
    assert bootstrap_scores(again, settings).to_dict() == bootstrap_scores(images, settings).to_dict()


def test_interval_brackets_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(3)
    small = random_matrices(rng, 30, 4)
    large = np.concatenate([random_matrices(rng, 30, 4) for _ in range(20)])
    widths = []
    for matrices in (small, large):
        images = ImageStats.from_matrices([f"{i:04d}" for i in range(len(matrices))], matrices)
        result = bootstrap_scores(images, BootstrapSettings(resamples=300))
        miou = result.scores["miou"]
        assert miou.low <= miou.estimate <= miou.high
        widths.append(miou.high - miou.low)
    assert widths[1] < widths[0] / 2


def test_sums_beyond_float64_exact_integers_stay_exact():
    stats = np.array([[[2**52 + 1, 3]], [[1, 2**52 + 3]], [[7, 5]]], np.int64)  # (3, 1, 2)
    settings = BootstrapSettings(resamples=4, seed=9)
    rng = np.random.default_rng(9)
    expected = [stats[rng.integers(0, 3, size=3)].sum(0) for _ in range(4)]
    got = np.concatenate([sums for (sums,) in resampled_sums([stats], None, settings)])
    np.testing.assert_array_equal(got, expected)


def test_groups_from_ids():
    assert groups_from_ids(["b_1", "a_2", "b_3"], r"^([^_]+)_").tolist() == [1, 0, 1]
    assert groups_from_ids(["b_1", "a_2", "b_3"], r"^[^_]+").tolist() == [1, 0, 1]
    with pytest.raises(ConfigError, match=r"'x1' does not match the group regex"):
        groups_from_ids(["a_1", "x1"], r"^([^_]+)_")
    with pytest.raises(ConfigError, match="takes no part"):
        groups_from_ids(["a_1", "b"], r"^(a)?")
    with pytest.raises(ConfigError, match="invalid"):
        groups_from_ids(["a"], r"(")


def test_image_stats_refuse_data_that_does_not_add_up(run):
    _, matrices, images = run
    with pytest.raises(InputError, match="do not add up"):
        ImageStats(images.ids, images.stats, matrices.sum(0) + np.eye(5, dtype=np.int64))
    with pytest.raises(ValueError, match="sorted"):
        ImageStats(images.ids[::-1], images.stats[::-1], images.total)


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="at least 1"):
        BootstrapSettings(resamples=0)
    with pytest.raises(ConfigError, match="confidence"):
        BootstrapSettings(confidence=95)


def test_no_images_is_an_error_that_says_why():
    empty = ImageStats(np.array([], dtype=object), np.zeros((0, 3, 2), np.int64), np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match="no scored images"):
        bootstrap_scores(empty)


def test_a_class_absent_everywhere_has_no_interval_and_the_record_is_strict_json():
    import json

    matrices = np.array([[[5, 1, 0], [2, 7, 0], [0, 0, 0]], [[3, 0, 0], [1, 9, 0], [0, 0, 0]]])
    result = bootstrap_scores(ImageStats.from_matrices(["a", "b"], matrices), BootstrapSettings(resamples=20),
                              class_names=("bg", "fg", "never"))
    never = result.per_class_iou[2]
    assert np.isnan(never.estimate) and np.isnan(never.low) and never.resamples == 0
    assert not never.excludes(0.0)
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["per_class_iou"]["never"] == {"estimate": None, "low": None, "high": None, "resamples": 0}
    assert record["scores"]["miou"]["resamples"] == 20 and record["resamples"] == 20
