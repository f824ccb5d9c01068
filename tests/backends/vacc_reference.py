"""What the fake VACC runtime must give, computed here from the checkpoint and not with the fake's code.

The fake's documented numerics (tests/fakes/vaststreamx/__init__.py, tests/backends/fake_vamc.py): weights
rounded to float16 (int8 models: each 4-D weight fake-quantized per output channel first), input x / 255
rounded to float16 (a one-channel model: its grey plane), a float32 forward per image on one thread, output
rounded to float16. int8 models also quantize the input of each convolution per tensor, symmetric int8, with
the thresholds the fake compiler recorded in the model's sidecar (`activation_thresholds`, read here; pass
None to leave the activations unquantized).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.models import create_model, load_model


def sidecar_thresholds(prefix: str) -> dict[str, float]:
    """The activation thresholds a fake-compiled int8 model carries."""
    return json.loads(Path(prefix + ".json").read_text())["vsx_fake"]["activation_thresholds"]


def _quantize_input(threshold: float):
    step = torch.tensor(threshold / 127, dtype=torch.float32)  # the documented s = float32(T / 127)

    def hook(module, inputs):
        x = inputs[0]
        return (torch.clamp(torch.round(x / step), -127, 127) * step,)

    return hook


def reference_logits(checkpoint: str, images: np.ndarray, precision: str = "fp16",
                     activation_thresholds: dict[str, float] | None = None) -> np.ndarray:
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
    modules = dict(module.named_modules())
    for name, threshold in (activation_thresholds or {}).items():
        modules[name].register_forward_pre_hook(_quantize_input(threshold))
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
