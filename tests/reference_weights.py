"""Deterministic weights from a keys list, by the reference fixtures' recipe (shared/reference/fixtures).

Per key k with shape s: a torch Generator seeded with crc32(k); num_batches_tracked -> zeros (int64);
running_var -> 0.5 + U[0, 1); everything else -> N(0, 1) / sqrt(fan_in), fan_in = prod(s[1:]) (1 for vectors).
The "centered" variant replaces the head bias with the values in centered_head_bias.json.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "reference"


def state_dict_from_keys(entries: list[dict]) -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict()
    for entry in entries:
        key, shape = entry["key"], list(entry["shape"])
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            tensor = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            tensor = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float32)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            tensor = torch.randn(shape, generator=gen, dtype=torch.float32) * (1.0 / math.sqrt(fan_in))
        state[key] = tensor
    return state


def reference_state_dict(keys_file: str, centered: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """Fixture weights: keys_file e.g. "keys_milesial.json"; centered e.g. "milesial", "bubbliiiing_vgg16"."""
    entries = json.loads((FIXTURES / keys_file).read_text())["keys"]
    state = state_dict_from_keys(entries)
    if centered is not None:
        bias = json.loads((FIXTURES / "centered_head_bias.json").read_text())[centered]
        state[bias["key"]] = torch.tensor(bias["values"],
                                          dtype=torch.float32).reshape(state[bias["key"]].shape)
    return state


def write_deterministic_checkpoint(path, name: str, **config) -> str:
    """Save a registered model with the recipe's weights for its keys (any config) as a .pth state_dict."""
    from pipeline.models import create_model

    shapes = [{"key": k, "shape": list(v.shape)} for k, v in create_model(name,
                                                                          **config).state_dict().items()]
    torch.save(state_dict_from_keys(shapes), path)
    return str(path)
