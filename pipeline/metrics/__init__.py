"""Segmentation metrics from integer confusion matrices: per-image counting, exact merging, dataset scores."""

from pipeline.metrics.confusion import confusion_matrix, image_dice, image_scores
from pipeline.metrics.scores import SegmentationScores, scores_from_confusion

__all__ = ["confusion_matrix", "image_dice", "image_scores", "SegmentationScores", "scores_from_confusion"]
