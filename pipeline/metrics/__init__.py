"""Segmentation metrics from integer confusion matrices: per-image counting, exact merging, dataset scores.

Functional core: `confusion_matrix`, `image_scores`, `image_dice`, `scores_from_confusion`. Stateful shell:
`ConfusionAccumulator` (update, merge, to/from JSON, compute), the one place where matrices are summed.
"""

from pipeline.metrics.accumulator import ConfusionAccumulator, ImageScores
from pipeline.metrics.confusion import confusion_matrix, image_dice, image_scores
from pipeline.metrics.scores import SegmentationScores, scores_from_confusion

__all__ = [
    "ConfusionAccumulator", "ImageScores", "SegmentationScores", "confusion_matrix", "image_dice",
    "image_scores",
    "scores_from_confusion",
]
