"""Confusion matrices of class-index masks, the only state a scoring run accumulates.

A matrix is int64 (C, C) with rows = ground truth and columns = prediction. Label pixels outside [0, C) are
ignored (VOC's 255 "void" and anything else out of range), exactly as bubbliiiing's `fast_hist` and Vastai's
`StreamSegMetrics` ignore them. Matrices of disjoint pixel sets add up, so any split of a dataset into batches
gives the same total.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError


def confusion_matrix(target: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (label, prediction) pairs.

    Args:
        target: (H, W) integer class indices; values outside [0, num_classes) are ignored.
        pred: (H, W) integer class indices in [0, num_classes).
        num_classes: C.

    Returns:
        (C, C) int64, rows = ground truth, columns = prediction.

    Example:
        >>> confusion_matrix(np.array([[0, 1], [255, 1]]), np.array([[0, 0], [1, 1]]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    if target.shape != pred.shape:
        raise InputError(
            f"Expected the label and the prediction to have the same size, got {target.shape} and "
            f"{pred.shape}. Labels must have the size of their image."
        )
    c = int(num_classes)
    pred = pred.ravel().astype(np.intp, copy=False)
    if pred.size and (pred.min() < 0 or pred.max() >= c):
        raise ValueError(f"prediction holds class {int(pred.max())}, outside [0, {c})")
    target = target.ravel()
    if target.dtype == np.uint8:
        # Every label value 0..255 gets its own row of bins; rows >= C (ignored labels) are sliced off. This
        # avoids building a boolean mask and is about twice as fast as masking on large images.
        counts = np.bincount(target.astype(np.intp) * c + pred, minlength=256 * c)
        return counts[: c * c].reshape(c, c).astype(np.int64, copy=False)
    keep = (target >= 0) & (target < c)
    counts = np.bincount(target[keep].astype(np.intp) * c + pred[keep], minlength=c * c)
    return counts.reshape(c, c).astype(np.int64, copy=False)


def image_dice(matrix: np.ndarray, eps: float = 1e-6) -> float:
    """milesial's per-image Dice: mean over foreground classes 1..C-1 of (2|P∩T| + eps) / (|P| + |T| + eps).

    A class absent from both label and prediction scores 1, as in milesial's evaluate.py.
    """
    diag = np.diag(matrix).astype(np.float64)[1:]
    sizes = (matrix.sum(0) + matrix.sum(1)).astype(np.float64)[1:]
    if diag.size == 0:
        return float("nan")
    return float(((2 * diag + eps) / (sizes + eps)).mean())


def image_scores(matrix: np.ndarray) -> tuple[float, float]:
    """(pixel accuracy, mean IoU over the classes present in label or prediction) of one image's matrix.

    NaN when the image has no scored pixel (all ignored).
    """
    total = matrix.sum()
    if total == 0:
        return float("nan"), float("nan")
    diag = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - diag
    present = union > 0
    return float(diag.sum() / total), float((diag[present] / union[present]).mean())
