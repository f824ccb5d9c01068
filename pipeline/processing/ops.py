"""Numeric steps of the post-processing paths, computed the way upstream computes them (torch float32 where it
uses torch, so results match bit for bit).

torch is imported by the first call, not with the module: the read/preprocess tasks import the processing
modules but never post-process, and a worker that skips torch's import (~1.5 s) leaves the CPUs to the
inference actors while they start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def as_tensor(scores: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 torch view of (C, h, w) scores (no copy for contiguous float32 numpy input)."""
    import torch

    if isinstance(scores, torch.Tensor):
        return scores.float()
    return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))


def softmax_channels(scores: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(C, h, w) logits -> (C, h, w) float32 softmax over C (as `F.softmax(logits[None], dim=1)[0]`)."""
    import torch

    return torch.softmax(as_tensor(scores)[None], dim=1)[0]


def to_probabilities(scores: np.ndarray | torch.Tensor, output_kind: str) -> torch.Tensor:
    """(C, h, w) network output -> probabilities: softmax (C > 1) or sigmoid (C == 1) of logits, else as is.
    """
    import torch

    tensor = as_tensor(scores)
    if output_kind == "probabilities":
        return tensor
    return softmax_channels(tensor) if tensor.shape[0] > 1 else torch.sigmoid(tensor)


def resize_bilinear(scores: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) -> (C, H, W) float32: half-pixel-centre bilinear, no antialias (F.interpolate,
    align_corners=False; equals OpenCV's INTER_LINEAR to ~1e-6)."""
    import torch.nn.functional as F

    tensor = as_tensor(scores)
    if tuple(tensor.shape[1:]) == tuple(size):
        return tensor
    return F.interpolate(tensor[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def argmax_channels(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W) uint8 index of the largest channel, the first one on ties (as numpy/torch argmax).

    Takes the maximum over C, then marks the channels equal to it from the last to the first, so the first
    one wins: about twice as fast as `np.argmax(axis=0)` (which copies to channels-last first). NaN scores
    are not supported (they give C - 1 where numpy gives the NaN's index).
    """
    import torch

    array = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    channels = array.shape[0]
    if channels == 1:
        return np.zeros(array.shape[1:], dtype=np.uint8)
    if channels == 2:
        return (array[1] > array[0]).view(np.uint8)
    best = array.max(axis=0)
    index = np.full(array.shape[1:], channels - 1, dtype=np.uint8)
    for c in range(channels - 2, -1, -1):
        np.copyto(index, np.uint8(c), where=array[c] == best)
    return index


def above_threshold(probabilities: np.ndarray | torch.Tensor, threshold: float) -> np.ndarray:
    """(H, W) or (1, H, W) float32 probabilities -> (H, W) uint8 0/1 (`p > threshold`, compared in float32
    like torch compares a float32 tensor with a Python float)."""
    import torch

    array = probabilities.numpy() if isinstance(probabilities, torch.Tensor) else np.asarray(probabilities)
    if array.ndim == 3:
        array = array[0]
    return (array > np.float32(threshold)).view(np.uint8)


def decide(scores: np.ndarray | torch.Tensor, output_kind: str, threshold: float) -> np.ndarray:
    """(C, H, W) network-output-like scores -> (H, W) uint8 classes.

    C > 1: arg-max (logits and probabilities alike). C == 1: sigmoid(logits) > threshold, or
    probabilities > threshold.
    """
    import torch

    tensor = as_tensor(scores)
    if tensor.shape[0] > 1:
        return argmax_channels(tensor)
    if output_kind != "probabilities":
        tensor = torch.sigmoid(tensor)
    return above_threshold(tensor, threshold)
