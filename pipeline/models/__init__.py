"""The model registry: the three public UNet families, re-implemented in plain PyTorch.

Each entry is a `ModelFamily`: how to build the network, how to read its configuration off a checkpoint's
tensors, and the defaults its upstream predict script uses. `create_model` builds one; `load_model` builds one
from a checkpoint (local path or s3:// URI) and checks that every tensor fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """What the pipeline needs to know about one registered model.

    Attributes:
        name: registry key, e.g. "milesial" or "bubbliiiing-vgg16".
        source: the public repository and the commit whose behaviour this re-implements.
        backbone: the encoder, as the seed table names it ("double-conv", "vgg16", "resnet50", "-").
        build: builds the torch module from a config dict (keys of `default_config`).
        config_from_state_dict: reads the config off checkpoint tensors (classes, channels, variant).
        default_config: the upstream defaults (the released checkpoints' shape).
        default_processing: name of the pre/post-processing the upstream predict script uses.
        default_input_size: (H, W) of the network input used for figures and fixed-size processing.
        input_divisor: H and W of the network input must be multiples of this (1 = any size).
        output_kind: "logits" (arg-max / sigmoid applied later) or "probabilities" (the net ends in a sigmoid).
        seed_parameters: parameter count of `default_config` as the seed table states it (None if absent).
    """

    name: str
    source: str
    backbone: str
    build: Callable[[Mapping[str, Any]], Any]
    config_from_state_dict: Callable[[Mapping[str, Any]], dict[str, Any]]
    default_config: Mapping[str, Any]
    default_processing: str
    default_input_size: tuple[int, int]
    input_divisor: int = 1
    output_kind: Literal["logits", "probabilities"] = "logits"
    seed_parameters: int | None = None
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelFamily] = Registry("model")
