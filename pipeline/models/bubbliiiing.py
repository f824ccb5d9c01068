"""bubbliiiing/unet-pytorch (commit 8ab3732): UNet decoder on a VGG16 or ResNet50 encoder.

Re-implemented from the description in the team's seeds report. Attribute names reproduce the upstream
state_dict keys exactly (`vgg.features.N.*` / `resnet.*` = torchvision names with a prefix, then
`up_concat4..1`, `up_conv` for ResNet50, `final`), so upstream `.pth` files load strictly. The decoder neither
pads nor crops, so the network input's H and W must be multiples of 32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigError, InputError

DEFAULT_CONFIG: dict[str, Any] = {"in_channels": 3, "num_classes": 21}
INPUT_DIVISOR = 32
# torchvision VGG16 "D" without BatchNorm: numbers are 3x3 conv widths, "M" a 2x2 max-pool.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")
# feat1..feat5 are these slices of `features`; the last pool (#30) is not used.
VGG16_TAPS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def check_input_size(height: int, width: int) -> None:
    """Raise ConfigError unless both sizes are multiples of 32 (the decoder concatenates without padding)."""
    if height % INPUT_DIVISOR or width % INPUT_DIVISOR or height <= 0 or width <= 0:
        raise ConfigError(
            f"bubbliiiing UNet needs a network input whose height and width are multiples of "
            f"{INPUT_DIVISOR}, "
            f"got {height}x{width}. Use --input-size 512 (the upstream default) or another multiple of "
            f"{INPUT_DIVISOR}, e.g. {_round_up(height)}x{_round_up(width)}.")


def _round_up(size: int) -> int:
    return max(INPUT_DIVISOR, -(-size // INPUT_DIVISOR) * INPUT_DIVISOR)


class VGG16Encoder(nn.Module):
    """VGG16 convolutional trunk (`features`); returns the five taps feat1..feat5 (strides 1, 2, 4, 8, 16)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for start, stop in VGG16_TAPS:
            x = self.features[start:stop](x)
            feats.append(x)
        return feats


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Encoder(nn.Module):
    """ResNet50 trunk with bubbliiiing's max-pool (k3, s2, p0, ceil_mode); no avgpool/fc.

    Returns feat1 (stem, stride 2, 64 ch) and layer1..layer4 (strides 4..32; 256, 512, 1024, 2048 ch).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self._in_planes = 64
        self.layer1 = self._make_layer(64, 3, stride=1)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_planes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_planes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self._in_planes, planes, stride, downsample)]
        self._in_planes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feat1 = self.relu(self.bn1(self.conv1(x)))
        feat2 = self.layer1(self.maxpool(feat1))
        feat3 = self.layer2(feat2)
        feat4 = self.layer3(feat3)
        feat5 = self.layer4(feat4)
        return [feat1, feat2, feat3, feat4, feat5]


class UnetUp(nn.Module):
    """Upsample the deeper map x2 (bilinear, align_corners=True); concat [skip, up]; 2 x (conv, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, skip: torch.Tensor, deeper: torch.Tensor) -> torch.Tensor:
        x = torch.cat([skip, self.up(deeper)], dim=1)
        return self.relu(self.conv2(self.relu(self.conv1(x))))


class BubbliiiingUNet(nn.Module):
    """bubbliiiing's `Unet(num_classes, backbone)`.

    Args:
        backbone: "vgg16" or "resnet50".
        in_channels: image channels (3 upstream).
        num_classes: object classes + 1 for background (21 for VOC).

    Forward: (N, in_channels, H, W) float32, H and W multiples of 32 -> (N, num_classes, H, W) float32 logits.
    """

    input_divisor = INPUT_DIVISOR

    def __init__(self, backbone: str = "vgg16", in_channels: int = 3, num_classes: int = 21) -> None:
        super().__init__()
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        if backbone == "vgg16":
            self.vgg = VGG16Encoder(in_channels)
            in_filters = (192, 384, 768, 1024)
        elif backbone == "resnet50":
            self.resnet = ResNet50Encoder(in_channels)
            in_filters = (192, 512, 1024, 3072)
        else:
            raise ConfigError(f"Unknown bubbliiiing backbone {backbone!r}: use 'vgg16' or 'resnet50'.")
        self.up_concat4 = UnetUp(in_filters[3], 512)
        self.up_concat3 = UnetUp(in_filters[2], 256)
        self.up_concat2 = UnetUp(in_filters[1], 128)
        self.up_concat1 = UnetUp(in_filters[0], 64)
        self.up_conv: nn.Module | None = None
        if backbone == "resnet50":
            self.up_conv = nn.Sequential(
                nn.UpsamplingBilinear2d(scale_factor=2),
                nn.Conv2d(64, 64, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
            )
        self.final = nn.Conv2d(64, num_classes, kernel_size=1)

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise InputError for a wrong channel count, ConfigError for H or W not a multiple of 32."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"Expected a (N, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}. "
                f"Convert the images to {self.in_channels} channel(s) (bubbliiiing converts to RGB).")
        check_input_size(int(x.shape[2]), int(x.shape[3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # export: no Python checks
            self.check_input_shape(x)
        encoder = self.vgg if self.backbone == "vgg16" else self.resnet
        feat1, feat2, feat3, feat4, feat5 = encoder(x)
        up = self.up_concat4(feat4, feat5)
        up = self.up_concat3(feat3, up)
        up = self.up_concat2(feat2, up)
        up = self.up_concat1(feat1, up)
        if self.up_conv is not None:
            up = self.up_conv(up)
        return self.final(up)


def _check_config(config: Mapping[str, Any]) -> None:
    for key in ("in_channels", "num_classes"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Expected {key} to be a positive integer, got {value!r}.")


def build_vgg16(config: Mapping[str, Any]) -> BubbliiiingUNet:
    """Build the VGG16 variant from a full config (keys of DEFAULT_CONFIG)."""
    _check_config(config)
    return BubbliiiingUNet("vgg16", config["in_channels"], config["num_classes"])


def build_resnet50(config: Mapping[str, Any]) -> BubbliiiingUNet:
    """Build the ResNet50 variant from a full config (keys of DEFAULT_CONFIG)."""
    _check_config(config)
    return BubbliiiingUNet("resnet50", config["in_channels"], config["num_classes"])


def _config_from(state_dict: Mapping[str, Any], first_conv: str) -> dict[str, Any]:
    first, head = state_dict.get(first_conv), state_dict.get("final.weight")
    if first is None or head is None or first.dim() != 4 or head.dim() != 4:
        return {}
    return {"in_channels": int(first.shape[1]), "num_classes": int(head.shape[0])}


def vgg16_config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """in_channels and num_classes of a VGG16-variant state_dict ({} if not one)."""
    return _config_from(state_dict, "vgg.features.0.weight")


def resnet50_config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """in_channels and num_classes of a ResNet50-variant state_dict ({} if not one)."""
    return _config_from(state_dict, "resnet.conv1.weight")
