"""The one stateful metric object: a confusion-matrix accumulator that updates, merges and serialises.

`pipeline.metrics.confusion` and `pipeline.metrics.scores` are the functional core (pure functions of arrays);
this is the small shell around them, in the spirit of torchmetrics' `Metric` (`update`, `merge_state`,
`compute`): every place that sums confusion matrices (a sink part, the driver's reduction over parts, bench)
holds one of these instead of adding arrays by hand. Its state is a sum, so any split of the images into
parts, merged in any order, gives the same scores as one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics.confusion import confusion_matrix, image_dice, image_scores
from pipeline.metrics.scores import SegmentationScores, scores_from_confusion


class ConfusionAccumulator:
    """Summed (C, C) int64 confusion matrix (rows = ground truth), plus milesial's per-image Dice sum and the
    label pixels left out of the matrix (ignored: any label value outside [0, C)).

    Example:
        >>> acc = ConfusionAccumulator(2)
        >>> _ = acc.update(np.array([[0, 1]]), np.array([[0, 0]]))
        >>> acc.merge(ConfusionAccumulator.from_json(acc.to_json())).matrix.tolist()
        [[2, 0], [2, 0]]
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"Expected at least 1 class, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.num_scored = 0  # images added
        self.dice_sum = 0.0  # sum over images of milesial's per-image Dice
        self.ignored_pixels = 0  # label pixels not scored
        self.zero_and_ignored_images = 0  # images whose label holds only class 0 and ignored pixels (0/255)

    def update(self, target: np.ndarray, pred: np.ndarray) -> ImageScores:
        """Add one image (label and mask of the same size; label values outside [0, C) are ignored)."""
        matrix = confusion_matrix(target, pred, self.num_classes)
        return self.add(matrix, label_pixels=int(target.size))

    def add(self, matrix: np.ndarray, label_pixels: int | None = None) -> ImageScores:
        """Add one image's confusion matrix (and its label's pixel count, when known, to count the ignored
        ones); returns that image's own scores."""
        scores = ImageScores.of(matrix)
        self.matrix += matrix
        self.num_scored += 1
        self.dice_sum += scores.dice
        if label_pixels is not None:
            ignored = label_pixels - int(matrix.sum())
            self.ignored_pixels += ignored
            class_0 = int(matrix[0].sum())
            only_0_and_ignored = ignored > 0 and class_0 > 0 and class_0 + ignored == label_pixels
            self.zero_and_ignored_images += int(only_0_and_ignored)
        return scores

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add another accumulator's state into this one (returns self)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"Cannot merge a {other.num_classes}-class accumulator into a "
                             f"{self.num_classes}-class one.")
        self.matrix += other.matrix
        self.num_scored += other.num_scored
        self.dice_sum += other.dice_sum
        self.ignored_pixels += other.ignored_pixels
        self.zero_and_ignored_images += other.zero_and_ignored_images
        return self

    @classmethod
    def merged(cls, num_classes: int, parts: Sequence[ConfusionAccumulator]) -> ConfusionAccumulator:
        total = cls(num_classes)
        for part in parts:
            total.merge(part)
        return total

    def compute(self, class_names: Sequence[str] | None = None) -> SegmentationScores:
        """The dataset scores of everything added so far."""
        return scores_from_confusion(self.matrix, None if class_names is None else tuple(class_names))

    @property
    def label_pixels(self) -> int:
        """Every label pixel added: scored (the matrix) and ignored."""
        return int(self.matrix.sum()) + self.ignored_pixels

    @property
    def dice_per_image_mean(self) -> float | None:
        """milesial's evaluate.py Dice: the mean of per-image Dice (None before any image)."""
        return self.dice_sum / self.num_scored if self.num_scored else None

    def to_json(self) -> dict[str, Any]:
        """`{"num_scored", "confusion" (flat, row-major), "dice_sum", "ignored_pixels",
        "zero_and_ignored_images"}`: the state, as in commit records."""
        return {"num_scored": self.num_scored, "confusion": self.matrix.ravel().tolist(),
                "dice_sum": self.dice_sum, "ignored_pixels": self.ignored_pixels,
                "zero_and_ignored_images": self.zero_and_ignored_images}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfusionAccumulator:
        flat = data["confusion"]
        num_classes = math.isqrt(len(flat))
        if num_classes * num_classes != len(flat) or num_classes == 0:
            raise ValueError(f"A confusion matrix of {len(flat)} values is not square.")
        acc = cls(num_classes)
        acc.matrix = np.asarray(flat, np.int64).reshape(num_classes, num_classes)
        acc.num_scored = int(data["num_scored"])
        acc.dice_sum = float(data["dice_sum"])
        acc.ignored_pixels = int(data.get("ignored_pixels", 0))  # records of older versions lack the counts
        acc.zero_and_ignored_images = int(data.get("zero_and_ignored_images", 0))
        return acc


@dataclass(frozen=True)
class ImageScores:
    """One image's confusion matrix and scores (the per-image columns of the mask Parquet)."""

    matrix: np.ndarray
    pixel_accuracy: float
    iou: float
    dice: float

    @classmethod
    def of(cls, matrix: np.ndarray) -> ImageScores:
        accuracy, iou = image_scores(matrix)
        return cls(matrix, accuracy, iou, image_dice(matrix))
