"""Checkpoints whose metrics are known without running them: a milesial UNet that predicts one class
everywhere (zero output weights, a large bias on that class). Its IoU for that class is (pixels labelled with
it) / (all labelled pixels); every other class scores 0 where it is labelled and has no IoU where it is
not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.demo.synthetic import CLASS_NAMES, VOID
from pipeline.models import create_model


def constant_model(path: Path, predicted_class: int) -> str:
    state = create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                         bilinear=False).state_dict()
    state["outc.conv.weight"] = torch.zeros_like(state["outc.conv.weight"])
    state["outc.conv.bias"] = torch.nn.functional.one_hot(torch.tensor(predicted_class), 4).float() * 10
    torch.save(state, path)
    return str(path)


def expected_iou(data: Path, predicted_class: int) -> dict[str, float | None]:
    """Per-class IoU of `constant_model(predicted_class)` on a `write_dataset` folder, from labels alone."""
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((data / "masks").iterdir())])
    labels = labels[labels != VOID]
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    return {name: (counts[i] / labels.size if i == predicted_class else (0.0 if counts[i] else None))
            for i, name in enumerate(CLASS_NAMES)}
