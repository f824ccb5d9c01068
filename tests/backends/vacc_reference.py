"""What the fake VACC runtime must give, computed here from the checkpoint and not with the fake's code.

The fake's documented numerics (tests/fakes/vaststreamx/__init__.py, tests/backends/fake_vamc.py): weights rounded
to float16 (int8 models: each 4-D weight fake-quantized per output channel first), input x / 255 rounded to
float16, a float32 forward per image on one thread, output rounded to float16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.models import create_model, load_model


def reference_logits(checkpoint: str, images: np.ndarray, precision: str = "fp16") -> np.ndarray:
    """(N, h, w, c) uint8 -> (N, C, h, w) float32 as the fake's numerics define them."""
    module = load_model("milesial", checkpoint).module
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if not tensor.is_floating_point():
                continue
            if precision == "int8" and tensor.ndim == 4:
                scale = tensor.abs().flatten(1).max(dim=1).values / 127
                scale[scale == 0] = 1
                scale = scale[:, None, None, None]
                tensor.copy_(torch.round(tensor / scale).clamp(-127, 127) * scale)
            tensor.copy_(tensor.half().float())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outputs = []
        with torch.no_grad():
            for image in images:
                x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255).half().float()
                outputs.append(module(x[None])[0].half().float().numpy())
    finally:
        torch.set_num_threads(threads)
    return np.stack(outputs)


def make_checkpoint(folder: Path, in_channels: int, num_classes: int) -> str:
    torch.manual_seed(10 * in_channels + num_classes)
    model = create_model("milesial", in_channels=in_channels, num_classes=num_classes, base_channels=8,
                         bilinear=False)
    path = folder / f"milesial_{in_channels}x{num_classes}.pth"
    torch.save(model.state_dict(), path)
    return str(path)
