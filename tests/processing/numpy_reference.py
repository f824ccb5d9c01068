"""Independent float64 numpy versions of the post-processing steps, written from the seeds report (§5)."""

from __future__ import annotations

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """(C, h, w) -> softmax over C in float64."""
    shifted = scores.astype(np.float64) - scores.max(axis=0, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=0, keepdims=True)


def sigmoid(scores: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))


def _axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel centres: source coordinate (d + 0.5) * src / dst - 0.5, clamped at 0, no antialias."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    pos = np.maximum(pos, 0.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, pos - lo


def bilinear(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) float64 bilinear with half-pixel centres (OpenCV INTER_LINEAR / torch
    align_corners=False)."""
    x = scores.astype(np.float64)
    y0, y1, wy = _axis(x.shape[1], size[0])
    x0, x1, wx = _axis(x.shape[2], size[1])
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def smooth_scores(channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """(C, h, w) float32 smooth random fields (a few cosines per channel), so near-ties are rare."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((channels, height, width))
    for c in range(channels):
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.3)
            out[c] += rng.uniform(0.5, 2.0) * np.cos(fy * yy + fx * xx + phase)
    return out.astype(np.float32)
