"""When two runtimes' masks count as the same: equal decisions wherever the decision is above float noise.

Two correct implementations of one network (torch and ONNX Runtime, 1 or 2 threads, AVX2 or AVX-512/AMX
kernels) move logits by ~1e-6, so a pixel whose top-2 logit gap is within that noise may flip between them
(a "near tie"); any other differing pixel is a real difference. The tests' mask comparisons
(`tests/near_ties.py`) and `--backend auto`'s probe use this one rule.

LOGIT_NOISE = 2e-5: logits computed here differ from the upstream fixtures by at most 3.4e-6; a top-2 gap
moves by at most twice that (6.8e-6), so 2e-5 leaves a factor ~3 for other CPUs' kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGIT_NOISE = 2e-5


def score_margin(scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(C, H, W) scores -> (H, W) decision margin, in the scores' units.

    C > 1: the gap between the largest and the second-largest channel (the arg-max's margin). C == 1: the
    distance to `threshold` (a logit threshold for sigmoid(logit) > t is log(t / (1 - t))).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] == 1:
        if threshold is None:
            raise ValueError("a single-channel decision needs its threshold")
        return np.abs(scores[0] - threshold)
    ordered = np.sort(scores, axis=0)
    return ordered[-1] - ordered[-2]


def decisions(scores: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """(C, H, W) logits -> (H, W) classes: arg-max, or logit > `threshold` for one channel."""
    scores = np.asarray(scores)
    if scores.shape[0] == 1:
        return (scores[0] > threshold).astype(np.uint8)
    return np.argmax(scores, axis=0).astype(np.uint8)


@dataclass(frozen=True)
class DecisionDiff:
    """How the decisions of `got` differ from the reference's, per `compare_logits`.

    Attributes:
        pixels: pixels compared.
        near_ties: differing pixels whose reference margin is within `LOGIT_NOISE` (allowed).
        mismatches: differing pixels above it (real differences).
        max_abs_error: the largest |got - reference| logit difference.
    """

    pixels: int
    near_ties: int
    mismatches: int
    max_abs_error: float

    def __add__(self, other: DecisionDiff) -> DecisionDiff:
        return DecisionDiff(self.pixels + other.pixels, self.near_ties + other.near_ties,
                            self.mismatches + other.mismatches, max(self.max_abs_error, other.max_abs_error))


def compare_logits(got: np.ndarray, reference: np.ndarray, threshold: float = 0.0,
                   tolerance: float = LOGIT_NOISE) -> DecisionDiff:
    """Compare the decisions of two (C, H, W) logit maps of one image, near ties told apart."""
    got, reference = np.asarray(got), np.asarray(reference)
    if got.shape != reference.shape:
        raise ValueError(f"Expected logits of one shape, got {got.shape} and {reference.shape}.")
    differ = decisions(got, threshold) != decisions(reference, threshold)
    margin = score_margin(reference, threshold if reference.shape[0] == 1 else None)
    ties = int((differ & (margin <= tolerance)).sum())
    return DecisionDiff(int(differ.size), ties, int(differ.sum()) - ties,
                        float(np.abs(got.astype(np.float64) - reference).max()) if got.size else 0.0)
