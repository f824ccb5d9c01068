"""Confusion-matrix metrics against scikit-learn, and the merge property."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score, precision_score, recall_score

from pipeline.errors import InputError
from pipeline.metrics import confusion_matrix, image_dice, image_scores, scores_from_confusion

IGNORE = 255


def random_masks(rng: np.random.Generator, n: int, c: int, shape=(37, 53), ignore_share=0.1):
    targets, preds = [], []
    for _ in range(n):
        target = rng.integers(0, c, shape).astype(np.uint8)
        target[rng.random(shape) < ignore_share] = IGNORE
        pred = np.where(rng.random(shape) < 0.7, target, rng.integers(0, c, shape)).astype(np.uint8)
        pred[target == IGNORE] = rng.integers(0, c, int((target == IGNORE).sum()))
        targets.append(target)
        preds.append(pred)
    return targets, preds


def sklearn_reference(targets, preds, c):
    t = np.concatenate([x.ravel() for x in targets])
    p = np.concatenate([x.ravel() for x in preds])
    keep = t != IGNORE
    matrix = sk_confusion_matrix(t[keep], p[keep], labels=list(range(c)))
    iou = jaccard_score(t[keep], p[keep], labels=list(range(c)), average=None, zero_division=0)
    return matrix, iou


@pytest.mark.parametrize("c", [2, 5, 21])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_matrix_and_iou_equal_sklearn(c, dtype):
    rng = np.random.default_rng(c)
    targets, preds = random_masks(rng, 6, c)
    total = sum(confusion_matrix(t.astype(dtype), p, c) for t, p in zip(targets, preds, strict=True))
    ref_matrix, ref_iou = sklearn_reference(targets, preds, c)
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, ref_matrix)
    scores = scores_from_confusion(total)
    np.testing.assert_allclose(scores.per_class_iou, ref_iou, rtol=1e-12)
    assert scores.miou == pytest.approx(np.nanmean(ref_iou), rel=1e-12)
    keep_t = np.concatenate([t.ravel() for t in targets])
    keep_p = np.concatenate([p.ravel() for p in preds])
    keep = keep_t != IGNORE
    assert scores.pixel_accuracy == pytest.approx((keep_t[keep] == keep_p[keep]).mean(), rel=1e-12)


def test_any_split_of_the_batches_gives_the_same_matrix():
    rng = np.random.default_rng(7)
    targets, preds = random_masks(rng, 12, 4)
    per_image = [confusion_matrix(t, p, 4) for t, p in zip(targets, preds, strict=True)]
    whole = confusion_matrix(np.stack(targets), np.stack(preds), 4)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 12), size=3, replace=False))
        parts = [sum(chunk) for chunk in np.split(np.array(per_image), cuts)]
        np.testing.assert_array_equal(sum(parts), whole)


def test_absent_class_conventions():
    # class 2 occurs in neither labels nor predictions
    target = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    scores = scores_from_confusion(confusion_matrix(target, pred, 3), ["bg", "a", "b"])
    assert np.isnan(scores.per_class_iou[2])
    assert scores.miou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores.miou_all_classes == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    d = scores.to_dict()
    assert d["per_class_iou"]["b"] is None
    assert d["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert d["per_class_support"] == {"bg": 2, "a": 2, "b": 0}


def test_out_of_range_labels_are_ignored_and_predictions_are_checked():
    target = np.array([[0, 7, 255, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    assert confusion_matrix(target, pred, 2).tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(target, np.array([[0, 2, 0, 0]], np.uint8), 2)
    with pytest.raises(InputError, match="same size"):
        confusion_matrix(target, pred[:, :3], 2)


def test_dice_matches_its_definitions():
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    scores = scores_from_confusion(matrix)
    # foreground classes: class 1 -> 2*3/(2*3+1+2) ; class 2 absent -> excluded (NaN) from the summed-matrix
    # mean
    assert scores.dice == pytest.approx(6 / 9)
    # milesial per-image rule: absent-from-both scores 1
    assert image_dice(matrix) == pytest.approx(((6 + 1e-6) / (9 + 1e-6) + 1.0) / 2)


def test_image_scores():
    matrix = np.array([[3, 1], [0, 4]])
    accuracy, miou = image_scores(matrix)
    assert accuracy == pytest.approx(7 / 8)
    assert miou == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert all(np.isnan(v) for v in image_scores(np.zeros((2, 2), np.int64)))


@pytest.mark.parametrize("c", [2, 5])
def test_per_class_precision_and_recall_equal_sklearn(c):
    rng = np.random.default_rng(40 + c)
    targets, preds = random_masks(rng, 4, c)
    preds[0][:] = np.where(preds[0] == c - 1, 0, preds[0])  # keep the last class rare in predictions
    total = sum(confusion_matrix(t, p, c) for t, p in zip(targets, preds, strict=True))
    t = np.concatenate([x.ravel() for x in targets])
    p = np.concatenate([x.ravel() for x in preds])
    keep = t != IGNORE
    labels = list(range(c))
    scores = scores_from_confusion(total).to_dict()
    names = scores["class_names"]
    np.testing.assert_allclose([scores["per_class_precision"][n] for n in names],
                               precision_score(t[keep], p[keep], labels=labels, average=None), rtol=1e-12)
    np.testing.assert_allclose([scores["per_class_recall"][n] for n in names],
                               recall_score(t[keep], p[keep], labels=labels, average=None), rtol=1e-12)
    never_predicted = scores_from_confusion(np.array([[3, 0], [2, 0]])).to_dict()
    assert never_predicted["per_class_precision"]["class_1"] is None  # not 0: the class was never predicted
