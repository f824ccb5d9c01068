"""The metric accumulator: any split of the images into parts, merged in any order, scores like one pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion

NUM_CLASSES = 4


def _images(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        shape = tuple(int(v) for v in rng.integers(1, 12, size=2))
        target = rng.integers(0, NUM_CLASSES, size=shape).astype(np.uint8)
        target[rng.random(shape) < 0.1] = 255  # ignored pixels
        pred = rng.integers(0, NUM_CLASSES, size=shape).astype(np.uint8)
        images.append((target, pred))
    return images


def _one_pass(images) -> ConfusionAccumulator:
    acc = ConfusionAccumulator(NUM_CLASSES)
    for target, pred in images:
        acc.update(target, pred)
    return acc


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), count=st.integers(1, 25), data=st.data())
def test_any_split_merged_in_any_order_equals_one_pass(seed, count, data):
    images = _images(seed, count)
    whole = _one_pass(images)
    cuts = sorted(data.draw(st.lists(st.integers(0, count), max_size=6)))
    bounds = [0, *cuts, count]
    # consecutive pairs of bounds: the shifted copy is one shorter on purpose
    parts = [_one_pass(images[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    order = data.draw(st.permutations(range(len(parts))))
    # parts travel as JSON (commit records) before the driver merges them
    merged = ConfusionAccumulator.merged(NUM_CLASSES, [ConfusionAccumulator.from_json(
        json.loads(json.dumps(parts[i].to_json()))) for i in order])
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert merged.num_scored == whole.num_scored == count
    assert merged.dice_sum == pytest.approx(whole.dice_sum, rel=1e-12, abs=1e-12)
    assert merged.ignored_pixels == whole.ignored_pixels == sum(int((t == 255).sum()) for t, _ in images)
    assert merged.label_pixels == sum(t.size for t, _ in images)
    assert merged.zero_and_ignored_images == whole.zero_and_ignored_images
    assert merged.compute().to_dict() == whole.compute().to_dict()


def test_the_state_is_the_sum_of_per_image_matrices():
    images = _images(7, 9)
    acc = _one_pass(images)
    total = sum(confusion_matrix(t, p, NUM_CLASSES) for t, p in images)
    np.testing.assert_array_equal(acc.matrix, total)
    assert acc.compute().to_dict() == scores_from_confusion(total).to_dict()
    assert acc.dice_per_image_mean == acc.dice_sum / 9
    assert ConfusionAccumulator(NUM_CLASSES).dice_per_image_mean is None


def test_merging_other_class_counts_is_refused():
    with pytest.raises(ValueError, match="3-class"):
        ConfusionAccumulator(2).merge(ConfusionAccumulator(3))


def test_labels_holding_only_0_and_ignored_pixels_are_counted():
    acc = ConfusionAccumulator(2)
    pred = np.zeros((2, 2), np.uint8)
    acc.update(np.array([[0, 255], [255, 255]], np.uint8), pred)  # a binary 0/255 mask: counted
    acc.update(np.array([[0, 0], [0, 0]], np.uint8), pred)  # background only: not
    acc.update(np.array([[255, 255], [255, 255]], np.uint8), pred)  # all ignored: not
    acc.update(np.array([[0, 1], [255, 255]], np.uint8), pred)  # a real class: not
    assert (acc.ignored_pixels, acc.label_pixels, acc.zero_and_ignored_images) == (9, 16, 1)
    again = ConfusionAccumulator.from_json(json.loads(json.dumps(acc.to_json())))
    assert (again.ignored_pixels, again.zero_and_ignored_images) == (9, 1)
