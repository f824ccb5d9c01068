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
        name: registry key, e.g. "milesial" or "bubbliiiing-vgg16". source: the public repository and the
        commit whose behaviour this re-implements. backbone: the encoder, as the seed table names it
        ("double-conv", "vgg16", "resnet50", "-"). build: builds the torch module from a config dict (keys of
        `default_config`). config_from_state_dict: reads the config off checkpoint tensors (classes, channels,
        variant). default_config: the upstream defaults (the released checkpoints' shape). default_processing:
        name of the pre/post-processing the upstream predict script uses. default_input_size: (H, W) of the
        network input used for figures and fixed-size processing. input_divisor: H and W of the network input
        must be multiples of this (1 = any size). output_kind: "logits" (arg-max / sigmoid applied later) or
        "probabilities" (the net ends in a sigmoid). seed_parameters: parameter count of `default_config` as
        the seed table states it (None if absent). recognises: `recognises(state_dict, metadata)`: whether a
        checkpoint is this family's (model inference). converters: checkpoint file formats this family reads
        besides torch/safetensors, e.g.
            {"keras-hdf5": bytes -> state_dict}; `pipeline.models.checkpoints` detects the format.
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
    recognises: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] = lambda state_dict, metadata: False
    converters: Mapping[str, Callable[[bytes], dict[str, Any]]] = field(default_factory=dict)


def _has_key(key: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], bool]:
    return lambda state_dict, metadata: key in state_dict


def _has_prefix(prefix: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], bool]:
    return lambda state_dict, metadata: any(k.startswith(prefix) for k in state_dict)


def _file_format(name: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], bool]:
    return lambda state_dict, metadata: metadata.get("format") == name


MODELS: Registry[ModelFamily] = Registry("model")

# The family modules and the loader import ModelFamily/MODELS from here: import them after both exist.
from pipeline.models import bubbliiiing, milesial  # noqa: E402

MODELS.register("milesial", ModelFamily(
    name="milesial",
    source="milesial/Pytorch-UNet@a013c80",
    backbone="double-conv",
    build=milesial.build,
    config_from_state_dict=milesial.config_from_state_dict,
    default_config=milesial.DEFAULT_CONFIG,
    default_processing="milesial-a013c80",
    default_input_size=(512, 512),  # where the seed table quotes FLOPs; upstream predict resizes by --scale
    input_divisor=1,
    seed_parameters=31_037_698,  # any input size: the up path pads to the skip size
    recognises=_has_key("inc.double_conv.0.weight"),
))
MODELS.register("bubbliiiing-vgg16", ModelFamily(
    name="bubbliiiing-vgg16",
    source="bubbliiiing/unet-pytorch@8ab3732",
    backbone="vgg16",
    build=bubbliiiing.build_vgg16,
    config_from_state_dict=bubbliiiing.vgg16_config_from_state_dict,
    default_config=bubbliiiing.DEFAULT_CONFIG,
    default_processing="bubbliiiing",
    default_input_size=(512, 512),
    input_divisor=bubbliiiing.INPUT_DIVISOR,
    seed_parameters=24_892_437,  # num_classes = object classes + background (21 for VOC)
    recognises=_has_prefix("vgg."),
))
MODELS.register("bubbliiiing-resnet50", ModelFamily(
    name="bubbliiiing-resnet50",
    source="bubbliiiing/unet-pytorch@8ab3732",
    backbone="resnet50",
    build=bubbliiiing.build_resnet50,
    config_from_state_dict=bubbliiiing.resnet50_config_from_state_dict,
    default_config=bubbliiiing.DEFAULT_CONFIG,
    default_processing="bubbliiiing",
    default_input_size=(512, 512),
    input_divisor=bubbliiiing.INPUT_DIVISOR,
    seed_parameters=43_934_101,  # max-pool k3 s2 p0 ceil_mode (not torchvision's)
    recognises=_has_prefix("resnet."),
))

from pipeline.models import zhixuhao  # noqa: E402
from pipeline.models.checkpoints import KERAS_FORMAT  # noqa: E402

MODELS.register("zhixuhao", ModelFamily(
    name="zhixuhao",
    source="zhixuhao/unet@b45af4d",
    backbone="-",
    build=zhixuhao.build,
    config_from_state_dict=zhixuhao.config_from_state_dict,
    default_config=zhixuhao.DEFAULT_CONFIG,
    default_processing="zhixuhao",
    default_input_size=(256, 256),
    input_divisor=zhixuhao.INPUT_DIVISOR,
    output_kind="probabilities",
    seed_parameters=31_031_685,  # the Keras model ported to torch; output: a 1-channel sigmoid probability
    recognises=_file_format(KERAS_FORMAT),
    converters={KERAS_FORMAT: zhixuhao.state_dict_from_keras_file},
))

from pipeline.models.loading import LoadedModel, create_model, load_model  # noqa: E402

__all__ = ["MODELS", "LoadedModel", "ModelFamily", "create_model", "load_model"]
