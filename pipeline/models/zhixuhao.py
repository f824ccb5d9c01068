"""zhixuhao/unet (commit b45af4d): the Keras UNet of `model.unet()`, ported to PyTorch, and its HDF5 reader.

Re-implemented from the description in the team's seeds report. 24 convolutions, all with bias, in the Keras
creation order; torch state_dict keys are `<name>.weight` / `<name>.bias` with the names of `CONV_NAMES`:

    conv1a conv1b | conv2a conv2b | conv3a conv3b | conv4a conv4b | conv5a conv5b |
    up6 conv6a conv6b | up7 conv7a conv7b | up8 conv8a conv8b | up9 conv9a conv9b conv9c | conv10

Keras conventions reproduced: 'same' padding of a stride-1 k x k convolution pads (k-1)//2 before and the rest
after, so the 2x2 `upN` convolutions pad 0 top/left and 1 bottom/right; `UpSampling2D` is nearest x2; skips
are concatenated [encoder, decoder]; `Dropout` is the identity at inference; `conv9c` (64 -> 2) has a ReLU and
`conv10` (1x1, 2 -> 1) a sigmoid, so the network outputs probabilities. Four 2x2 max-pools: H and W must be
multiples of 16. A Keras kernel (kh, kw, in, out) is a torch weight `.permute(3, 2, 0, 1)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError, ConfigError, InputError
from pipeline.models.keras_h5 import KerasLayer, read_keras_weights

DEFAULT_CONFIG: dict[str, Any] = {"in_channels": 1, "num_classes": 1}
INPUT_DIVISOR = 16
# (name, kernel size, input channels or None for the image channels, output channels), Keras creation order.
CONV_LAYOUT: tuple[tuple[str, int, int | None, int], ...] = (
    ("conv1a", 3, None, 64), ("conv1b", 3, 64, 64),
    ("conv2a", 3, 64, 128), ("conv2b", 3, 128, 128),
    ("conv3a", 3, 128, 256), ("conv3b", 3, 256, 256),
    ("conv4a", 3, 256, 512), ("conv4b", 3, 512, 512),
    ("conv5a", 3, 512, 1024), ("conv5b", 3, 1024, 1024),
    ("up6", 2, 1024, 512), ("conv6a", 3, 1024, 512), ("conv6b", 3, 512, 512),
    ("up7", 2, 512, 256), ("conv7a", 3, 512, 256), ("conv7b", 3, 256, 256),
    ("up8", 2, 256, 128), ("conv8a", 3, 256, 128), ("conv8b", 3, 128, 128),
    ("up9", 2, 128, 64), ("conv9a", 3, 128, 64), ("conv9b", 3, 64, 64), ("conv9c", 3, 64, 2),
    ("conv10", 1, 2, 1),
)
CONV_NAMES: tuple[str, ...] = tuple(name for name, *_ in CONV_LAYOUT)


def check_input_size(height: int, width: int) -> None:
    """Raise ConfigError unless both sizes are positive multiples of 16 (four 2x2 max-pools, no padding)."""
    if height % INPUT_DIVISOR or width % INPUT_DIVISOR or height <= 0 or width <= 0:
        up = [max(INPUT_DIVISOR, -(-s // INPUT_DIVISOR) * INPUT_DIVISOR) for s in (height, width)]
        raise ConfigError(
            f"zhixuhao UNet needs a network input whose height and width are multiples of {INPUT_DIVISOR}, "
            f"got {height}x{width}. Use --input-size 256 (the upstream default) or another multiple of "
            f"{INPUT_DIVISOR}, e.g. {up[0]}x{up[1]}.")


class KerasSameConv2d(nn.Conv2d):
    """Stride-1 Conv2d with Keras 'same' padding: (k-1)//2 before, the rest after (bottom/right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        before, after = (kernel_size - 1) // 2, (kernel_size - 1) - (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, padding=before if before == after else 0)
        self.extra_pad = None if before == after else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)


class ZhixuhaoUNet(nn.Module):
    """zhixuhao's Keras UNet in PyTorch (channels-first).

    Args:
        in_channels: image channels (1 upstream, the ISBI membrane grey images).

    Forward: (N, in_channels, H, W) float32, H and W multiples of 16 -> (N, 1, H, W) float32 probabilities
    in [0, 1] (the network ends in a sigmoid). `num_classes` is 1 (one foreground-probability channel).
    """

    input_divisor = INPUT_DIVISOR

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = 1
        for name, kernel, cin, cout in CONV_LAYOUT:
            self.add_module(name, KerasSameConv2d(in_channels if cin is None else cin, cout, kernel))

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise InputError for a wrong channel count, ConfigError for H or W not a multiple of 16."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"Expected a (N, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}. "
                f"Convert the images to {self.in_channels} channel(s) (zhixuhao reads grey images) or load a "
                "checkpoint with that many inputs.")
        check_input_size(int(x.shape[2]), int(x.shape[3]))

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, name)(x))

    def _up(self, level: int, deeper: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self._conv(f"up{level}", F.interpolate(deeper, scale_factor=2.0, mode="nearest"))
        x = self._conv(f"conv{level}a", torch.cat([skip, up], dim=1))
        return self._conv(f"conv{level}b", x)

    def encode_first_block(self, x: torch.Tensor) -> torch.Tensor:
        """conv1a -> ReLU -> conv1b -> ReLU: (N, in_channels, H, W) -> (N, 64, H, W) float32."""
        return self._conv("conv1b", self._conv("conv1a", x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        skips = [self.encode_first_block(x)]
        for level in (2, 3, 4, 5):
            x = F.max_pool2d(skips[-1], 2)
            skips.append(self._conv(f"conv{level}b", self._conv(f"conv{level}a", x)))
        x = skips.pop()  # drop5 (Dropout is the identity at inference)
        for level in (6, 7, 8, 9):
            x = self._up(level, x, skips.pop())
        x = self._conv("conv9c", x)
        return torch.sigmoid(self.conv10(x))  # type: ignore[operator]


def build(config: Mapping[str, Any]) -> ZhixuhaoUNet:
    """Build the UNet from a full config (keys of DEFAULT_CONFIG; num_classes must be 1)."""
    in_channels = config["in_channels"]
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"Expected in_channels to be a positive integer, got {in_channels!r}.")
    num_classes = config.get("num_classes", 1)
    if isinstance(num_classes, bool) or num_classes != 1:
        raise ConfigError(
            f"Expected num_classes=1 for model 'zhixuhao' (one sigmoid probability channel), got "
            f"{config['num_classes']!r}. Leave --num-classes out (threshold the probability for 2 classes), "
            "or pick a multi-class model such as milesial or bubbliiiing-vgg16.")
    return ZhixuhaoUNet(in_channels=in_channels)


def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Read in_channels off the first convolution's weight; {} when it is absent (not a zhixuhao file)."""
    first = state_dict.get("conv1a.weight")
    if first is None or first.dim() != 4:
        return {}
    return {"in_channels": int(first.shape[1])}


def _split_conv(layer: KerasLayer, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a Keras Conv2D layer, or CheckpointError if the layer is not one."""
    kernels = [a for a in layer.arrays if a.ndim == 4]
    biases = [a for a in layer.arrays if a.ndim == 1]
    if len(layer.arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
        pairs = zip(layer.weight_names, layer.arrays, strict=True)
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in pairs)
        raise CheckpointError(
            f"Keras layer {layer.name!r} (weighted layer #{index + 1}) holds {shapes}, not a Conv2D kernel "
            "(kh, kw, in, out) and bias (out,). zhixuhao's UNet has only biased Conv2D layers: this file is "
            "another architecture (e.g. with BatchNormalization); load it with the model it was trained "
            "with.")
    return kernels[0], biases[0]


def state_dict_from_keras_file(data: bytes) -> dict[str, torch.Tensor]:
    """Convert a zhixuhao Keras HDF5 file (full model or weights-only) into this port's state_dict.

    The 24 weighted layers are taken in the file's `layer_names` order (Keras `model.layers` order, which for
    this network is the creation order), so Keras 2 names (conv2d_1..conv2d_24) and tf.keras names
    (conv2d, conv2d_1..conv2d_23) both work. Kernels (kh, kw, in, out) become (out, in, kh, kw); files saved
    by the Theano backend (attribute backend="theano") have their kernels flipped spatially, as Keras 2 does
    when it loads them under TensorFlow.

    Args:
        data: the bytes of the .hdf5/.h5 file.

    Returns:
        {"conv1a.weight": (64, C, 3, 3) float32, "conv1a.bias": (64,) float32, ...}, 48 tensors.

    Raises:
        CheckpointError: h5py missing, unreadable file, wrong number of layers, a layer that is not a
            Conv2D, or a shape that does not match the architecture.
    """
    weights = read_keras_weights(data)
    layers = weights.layers
    if len(layers) != len(CONV_LAYOUT):
        names = ", ".join(layer.name for layer in layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise CheckpointError(
            f"Expected {len(CONV_LAYOUT)} Conv2D layers with weights (zhixuhao's unet()), got {len(layers)} "
            f"weighted layers ({names or 'none'}). The file holds another architecture: load it with "
            "the model it was trained with, or pass --model for that family.")
    flip = weights.backend == "theano"
    state: dict[str, torch.Tensor] = {}
    in_channels = None
    for index, (layer, (name, k, cin, cout)) in enumerate(zip(layers, CONV_LAYOUT, strict=True)):
        kernel, bias = _split_conv(layer, index)
        if cin is None:
            in_channels = int(kernel.shape[2])
            cin = in_channels
        expected = (k, k, cin, cout)
        if tuple(kernel.shape) != expected or tuple(bias.shape) != (cout,):
            raise CheckpointError(
                f"Keras layer {layer.name!r} (Conv2D #{index + 1}, our {name!r}) has kernel "
                f"{list(kernel.shape)} and bias {list(bias.shape)}; zhixuhao's UNet needs kernel "
                f"{list(expected)} and bias [{cout}]. The file holds a modified architecture (other widths, "
                "classes or layer order): load it with the model it was trained with.")
        if flip:
            kernel = kernel[::-1, ::-1]
        # astype copies into fresh strides (ascontiguousarray keeps a flipped size-1 axis's negative stride)
        state[f"{name}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).astype(np.float32, order="C"))
        state[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32, order="C"))
    return state
