"""Dataset scores computed once, from the summed confusion matrix.

Two mIoU conventions are reported because the public code disagrees:
- `miou`: mean IoU over the classes that occur in the labels or the predictions (nanmean; a class absent from
  both is not scored). This is the common definition (torchmetrics, Vastai's StreamSegMetrics).
- `miou_all_classes`: bubbliiiing's `get_miou.py`: every class counts, an absent class scores 0 (its
  denominators
  are clamped to 1). Equal to `miou` when every class occurs.
Dice is computed per class from the same matrix (2TP / (2TP + FP + FN)) and averaged over the foreground
classes, background (class 0) excluded as milesial's evaluate.py does; milesial averages per image instead,
which the run reports separately as `dice_per_image_mean`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one confusion matrix. Per-class lists are NaN for a class in neither labels nor masks."""

    confusion_matrix: np.ndarray  # (C, C) int64, rows = ground truth
    class_names: tuple[str, ...]
    per_class_iou: np.ndarray
    per_class_accuracy: np.ndarray  # recall: TP / (TP + FN)
    per_class_dice: np.ndarray
    per_class_precision: np.ndarray  # TP / (TP + FP): of the pixels predicted as the class, how many are
    miou: float
    miou_all_classes: float
    mean_pixel_accuracy: float  # mPA: nanmean of per-class accuracy
    mean_pixel_accuracy_all_classes: float
    pixel_accuracy: float
    dice: float  # mean over foreground classes 1..C-1

    def to_dict(self) -> dict:
        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        def named(values: np.ndarray) -> dict[str, float | None]:
            return dict(zip(self.class_names, listed(values), strict=True))

        def number(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        support = self.confusion_matrix.sum(1)
        return {
            "miou": number(self.miou),
            "miou_definition": "mean IoU over classes present in labels or predictions (nanmean)",
            "miou_all_classes": number(self.miou_all_classes),
            "miou_all_classes_definition": "bubbliiiing get_miou.py: every class averaged, absent classes "
                                           "count 0",
            "pixel_accuracy": number(self.pixel_accuracy),
            "mean_pixel_accuracy": number(self.mean_pixel_accuracy),
            "mean_pixel_accuracy_all_classes": number(self.mean_pixel_accuracy_all_classes),
            "dice": number(self.dice),
            "dice_definition": "2TP/(2TP+FP+FN) per class from the summed matrix, mean over classes 1..C-1",
            "class_names": list(self.class_names),
            "per_class_iou": named(self.per_class_iou),
            "per_class_accuracy": named(self.per_class_accuracy),
            "per_class_dice": named(self.per_class_dice),
            "per_class_precision": named(self.per_class_precision),
            "per_class_recall": named(self.per_class_accuracy),
            "precision_recall_definition": "precision TP/(TP+FP) (column), recall TP/(TP+FN) (row; = "
                                           "per_class_accuracy); null when the class was never predicted / "
                                           "labelled",
            "per_class_support": dict(zip(self.class_names, (int(v) for v in support), strict=True)),
            "confusion_matrix": self.confusion_matrix.astype(np.int64).tolist(),
            "confusion_matrix_layout": "rows = ground truth, columns = prediction, pixel counts",
        }


def scores_from_confusion(matrix: np.ndarray, class_names: list[str] | tuple[str, ...] | None = None,
                          ) -> SegmentationScores:
    """All dataset scores of a (C, C) int64 confusion matrix (rows = ground truth, columns = prediction).

    Example:
        >>> s = scores_from_confusion(np.array([[3, 1], [0, 4]]))
        >>> round(s.miou, 4), round(s.pixel_accuracy, 3)
        (0.775, 0.875)
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    c = matrix.shape[0]
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(c))
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class matrix")
    diag = np.diag(matrix).astype(np.float64)
    rows = matrix.sum(1).astype(np.float64)  # ground-truth pixels per class
    cols = matrix.sum(0).astype(np.float64)  # predicted pixels per class
    union = rows + cols - diag
    iou = _ratio(diag, union)
    accuracy = _ratio(diag, rows)
    dice = _ratio(2 * diag, rows + cols)
    total = matrix.sum()
    return SegmentationScores(
        confusion_matrix=matrix,
        class_names=names,
        per_class_iou=iou,
        per_class_accuracy=accuracy,
        per_class_dice=dice,
        per_class_precision=_ratio(diag, cols),
        miou=_nanmean(iou),
        miou_all_classes=float((diag / np.maximum(union, 1)).mean()),
        mean_pixel_accuracy=_nanmean(accuracy),
        mean_pixel_accuracy_all_classes=float((diag / np.maximum(rows, 1)).mean()),
        pixel_accuracy=float(diag.sum() / total) if total else float("nan"),
        dice=_nanmean(dice[1:]) if c > 1 else _nanmean(dice),
    )
