"""milesial/Pytorch-UNet (commit a013c80): the classic UNet with BatchNorm double convolutions.

Re-implemented from the description in the team's seeds report; the attribute names reproduce the upstream
state_dict keys exactly (`inc.double_conv.0.weight` ... `outc.conv.bias`), so upstream `.pth` files load
strictly. Widths are `base_channels` x 1, 2, 4, 8, 16 (64 upstream). Any input size works: the up path pads
the upsampled tensor to the skip tensor's size (the extra pixel goes bottom/right).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, InputError

DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "num_classes": 2,
    "bilinear": False,
    "base_channels": 64,
    "conv_bias": False,
}
MIN_INPUT_SIZE = 16  # four 2x2 max-pools: anything smaller leaves an empty bottleneck


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice; `mid_channels` defaults to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 conv_bias: bool = False) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool (floor) then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, conv_bias: bool = False) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, conv_bias=conv_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the deeper map, pad it to the skip map's size, concatenate [skip, upsampled], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool, conv_bias: bool = False) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, conv_bias=conv_bias)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels, conv_bias=conv_bias)

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(deeper)
        diff_y = skip.shape[2] - up.shape[2]
        diff_x = skip.shape[3] - up.shape[3]
        up = F.pad(up, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([skip, up], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the class logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """milesial's UNet.

    Args:
        in_channels: image channels (upstream `n_channels`).
        num_classes: output channels (upstream `n_classes`); 1 means sigmoid + threshold downstream.
        bilinear: upsample bilinearly (align_corners=True) instead of with transposed convolutions.
        base_channels: width of the first level (64 upstream).
        conv_bias: the DoubleConv convolutions have biases (release files before Dec 2021).

    Forward: (N, in_channels, H, W) float32 -> (N, num_classes, H, W) float32 raw logits, any H, W >= 16.
    """

    input_divisor = 1

    def __init__(self, in_channels: int = 3, num_classes: int = 2, bilinear: bool = False,
                 base_channels: int = 64, conv_bias: bool = False) -> None:
        super().__init__()
        self.in_channels = self.n_channels = in_channels
        self.num_classes = self.n_classes = num_classes
        self.bilinear = bilinear
        self.base_channels = base_channels
        self.conv_bias = conv_bias
        b, factor = base_channels, 2 if bilinear else 1
        self.inc = DoubleConv(in_channels, b, conv_bias=conv_bias)
        self.down1 = Down(b, 2 * b, conv_bias)
        self.down2 = Down(2 * b, 4 * b, conv_bias)
        self.down3 = Down(4 * b, 8 * b, conv_bias)
        self.down4 = Down(8 * b, 16 * b // factor, conv_bias)
        self.up1 = Up(16 * b, 8 * b // factor, bilinear, conv_bias)
        self.up2 = Up(8 * b, 4 * b // factor, bilinear, conv_bias)
        self.up3 = Up(4 * b, 2 * b // factor, bilinear, conv_bias)
        self.up4 = Up(2 * b, b, bilinear, conv_bias)
        self.outc = OutConv(b, num_classes)

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise InputError unless x is (N, in_channels, H, W) with H, W >= 16."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"Expected a (N, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}. "
                f"Convert the images to {self.in_channels} channel(s) or load a checkpoint with that many "
                "inputs.")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise InputError(
                f"Expected a network input of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {h}x{w}. "
                "Use a larger --scale or larger images.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # export: no Python checks
            self.check_input_shape(x)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def build(config: Mapping[str, Any]) -> UNet:
    """Build the UNet from a full config (the keys of DEFAULT_CONFIG)."""
    for key in ("in_channels", "num_classes", "base_channels"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Expected {key} to be a positive integer, got {value!r}.")
    return UNet(
        in_channels=config["in_channels"],
        num_classes=config["num_classes"],
        bilinear=bool(config["bilinear"]),
        base_channels=config["base_channels"],
        conv_bias=bool(config["conv_bias"]),
    )


def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Read the config off a milesial state_dict's tensors (only the values the tensors determine).

    Returns an empty dict when the signature tensors are absent (not a milesial file).
    """
    first, head = state_dict.get("inc.double_conv.0.weight"), state_dict.get("outc.conv.weight")
    if first is None or head is None or first.dim() != 4 or head.dim() != 4:
        return {}
    return {
        "in_channels": int(first.shape[1]),
        "num_classes": int(head.shape[0]),
        "bilinear": "up1.up.weight" not in state_dict,
        "base_channels": int(first.shape[0]),
        "conv_bias": "inc.double_conv.0.bias" in state_dict,
    }
