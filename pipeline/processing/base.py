"""What every processing mode shares: the prepared-image record, the exact /255, and the Processing contract.

A processing mode turns one decoded image into a uint8 network-size array plus a small `meta` dict (CPU
tasks), and turns that image's network output back into a class-index mask (inference actor). Everything a
mode keeps is a plain value, so instances pickle and travel to Ray workers; `meta` holds only ints, floats and
strings, so it survives a JSON round trip.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from pipeline.models import ModelFamily

# Every upstream path divides a uint8 image by 255 (milesial: float64 then float32; bubbliiiing: float32;
# torchvision ToTensor: float32). All three give these 256 float32 values bit for bit.
UINT8_TO_UNIT: np.ndarray = (np.arange(256) / 255.0).astype(np.float32)
UINT8_TO_UNIT.setflags(write=False)

MAX_CLASSES = 255  # class maps are uint8 and 255 is the labels' ignore value


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image.

    Attributes:
        image: (h, w, c) uint8 at the network input size, c = the model's input channels.
        meta: what `finish` and `prepare_label` need (original and network sizes, letterbox box, ...); plain
            ints/floats/strings only, so it survives JSON.
    """

    image: np.ndarray
    meta: dict[str, Any]


def to_network_input(images: np.ndarray) -> np.ndarray:
    """(N, h, w, c) uint8 -> (N, c, h, w) float32 in [0, 1], upstream's x / 255 exactly."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise PipelineError(
            f"Expected network images as (N, h, w, c) uint8, got {images.ndim}-D {images.dtype}: pass the "
            "`image` arrays that `prepare` returned, stacked on a new first axis.")
    return UINT8_TO_UNIT[np.ascontiguousarray(images.transpose(0, 3, 1, 2))]


def image_array(image: Image.Image) -> np.ndarray:
    """A PIL image as (h, w, c) uint8 (c = 1 for single-band images; mode '1' becomes 0/1)."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class UpstreamPng:
    """PNG bytes of the file the upstream predict script writes for a mask (`Processing.upstream_png`)."""

    processing: Processing
    mask_values: list[Any] | None = None

    def __call__(self, classes: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        self.processing.upstream_png(classes, self.mask_values).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


class Processing:
    """Base class of the processing modes (one instance per run, shipped to every worker).

    Subclasses set `name`, `description` and `options` (the size options they take: "scale" or "input_size"),
    and implement `prepare` and `finish`; `create` checks the options and builds one.

    Attributes:
        family: model family name (e.g. "milesial").
        output_kind: "logits" or "probabilities" (the network ends in a sigmoid/softmax).
        num_classes: channels of the network output.
        in_channels: channels of the network input.
        threshold: probability threshold for single-channel outputs.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, family: str, output_kind: str, num_classes: int, in_channels: int,
                 threshold: float) -> None:
        self.family = family
        self.output_kind = output_kind
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.threshold = threshold

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, *, family: ModelFamily, num_classes: int, in_channels: int, scale: float | None = None,
               input_size: tuple[int, int] | None = None, threshold: float = 0.5) -> Processing:
        """Check the options against this mode and build it (see `pipeline.processing.create_processing`)."""
        cls._check_options(family, scale=scale, input_size=input_size)
        common = cls._common(family, num_classes, in_channels, threshold)
        return cls._build(family, common, scale=scale, input_size=input_size)

    @classmethod
    def _build(cls, family: ModelFamily, common: dict[str, Any], *, scale: float | None,
               input_size: tuple[int, int] | None) -> Processing:
        return cls(**common)

    @classmethod
    def _check_options(cls, family: ModelFamily, *, scale: float | None,
                       input_size: tuple[int, int] | None) -> None:
        takes = " and ".join(f"--{o.replace('_', '-')}" for o in sorted(cls.options)) or "no size option"
        for option, value in (("scale", scale), ("input_size", input_size)):
            if value is not None and option not in cls.options:
                flag = f"--{option.replace('_', '-')}"
                other = ("milesial-a013c80 (resizes by --scale)" if option == "scale"
                         else "resize or model-res (fixed --input-size)")
                raise ConfigError(
                    f"{flag} does not apply to --processing {cls.name}, which takes {takes}. Drop {flag}, or "
                    f"use --processing {other}.")

    @classmethod
    def _common(cls, family: ModelFamily, num_classes: int, in_channels: int,
                threshold: float) -> dict[str, Any]:
        if not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
            raise ConfigError(
                f"Expected 1..{MAX_CLASSES} output classes, got {num_classes!r}: class masks are 8-bit. "
                "Check --num-classes or the checkpoint.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"Expected a positive number of input channels, got {in_channels!r}: check "
                              "--in-channels or the checkpoint.")
        if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(
                f"Expected --threshold between 0 and 1, got {threshold!r}: it is a probability.")
        return {"family": family.name, "output_kind": family.output_kind, "num_classes": num_classes,
                "in_channels": in_channels, "threshold": float(threshold)}

    @staticmethod
    def _input_size(family: ModelFamily, input_size: tuple[int, int] | None, mode: str) -> tuple[int, int]:
        """The (H, W) network input: the option, else the family's default; checked against the divisor."""
        size = family.default_input_size if input_size is None else input_size
        try:
            height, width = (int(v) for v in size)
            valid = (height, width) == tuple(size) and height > 0 and width > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ConfigError(f"Expected --input-size as two positive integers (H, W), got {input_size!r}: "
                              "e.g. --input-size 512 or --input-size 384x512.")
        divisor = family.input_divisor
        if height % divisor or width % divisor:
            up = [max(divisor, -(-v // divisor) * divisor) for v in (height, width)]
            raise ConfigError(
                f"--input-size {height}x{width} does not fit {family.name} with --processing {mode}: its "
                f"network needs height and width that are multiples of {divisor}. Use e.g. --input-size "
                f"{up[0]}x{up[1]}.")
        return height, width

    @staticmethod
    def _scale(scale: float | None, default: float) -> float:
        value = default if scale is None else scale
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"Expected --scale to be a positive number, got {scale!r}: e.g. --scale 0.5.")
        return float(value)

    # -- what the pipeline calls -------------------------------------------------------------------------

    @property
    def num_classes_out(self) -> int:
        """Classes of the masks `finish` returns: 2 for single-channel outputs (0/1), else `num_classes`."""
        return 2 if self.num_classes == 1 else self.num_classes

    def prepare(self, image: Image.Image) -> Prepared:
        """Decoded image (any PIL mode) -> network-size uint8 image and meta; InputError if unusable."""
        raise NotImplementedError

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """One image's network output (C, h, w) float32 -> (H', W') uint8 class indices at `output_size`."""
        raise NotImplementedError

    def to_network_input(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) uint8 -> (N, c, h, w) float32: x / 255 exactly as upstream computes it."""
        return to_network_input(images)

    def network_size(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        """(h, w) of the network input (and output) for this image."""
        return int(meta["net_height"]), int(meta["net_width"])

    def original_size(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        """(H, W) of the image as decoded."""
        return int(meta["height"]), int(meta["width"])

    def output_size(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        """(H', W') of the masks `finish` returns: the original size unless the mode says otherwise."""
        return self.original_size(meta)

    def prepare_label(self, label: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """(H, W) uint8 label at the original size (255 = ignore) -> the label at `output_size` (itself)."""
        return label

    def upstream_png(self, classes: np.ndarray, mask_values: list[Any] | None = None) -> Image.Image:
        """The mask as the upstream predict script would save it; here: class ids in mode 'L'."""
        return Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8))

    def upstream_png_encoder(self, mask_values: list[Any] | None = None) -> UpstreamPng:
        """A picklable `mask -> PNG bytes` of `upstream_png` (`--png-values upstream`)."""
        return UpstreamPng(self, mask_values)

    # -- helpers for subclasses --------------------------------------------------------------------------

    def _meta(self, image: Image.Image, net_size: tuple[int, int], **extra: Any) -> dict[str, Any]:
        width, height = image.size
        return {"mode": self.name, "height": height, "width": width,
                "net_height": int(net_size[0]), "net_width": int(net_size[1]), **extra}

    def _check_output(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        output = np.asarray(output, dtype=np.float32)
        expected = (self.num_classes, *self.network_size(meta))
        if output.shape != expected:
            raise PipelineError(
                f"Expected this image's network output as (C, h, w) = {expected}, got {output.shape}: the "
                "backend returned a different shape than the model and preprocessing imply. Check "
                "--num-classes and the backend's model files.")
        return output

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))
