"""milesial/Pytorch-UNet's predict.py, bit for bit: "milesial-a013c80" (pinned) and "milesial-21d7850" (HEAD).

Preprocessing (both commits): newW = int(scale * W), newH = int(scale * H); PIL BICUBIC resize; the file's own
channels (no conversion); / 255 (a013c80: always; 21d7850: only if some value > 1 - an image whose values are
all 0 or 1 is fed as 0.0/1.0, which this module reproduces by shipping it as 0/255); no mean/std.

Which decoded images are accepted (upstream feeds np.asarray(image) to the network unchanged):
    'L' (1 channel), 'RGB' (3), 'LA' (2), 'RGBA' (4): accepted when the model takes that many channels; the
        alpha channel is fed as the file has it, as upstream does (and PIL's premultiplied-alpha resize too).
    '1': 21d7850 only (it does not divide 0/1 values, so white is 1.0); a013c80 divides by 255 and would read
        white as 1/255, so it is rejected there.
    'P'/'PA' (palette indices), 'CMYK'/'YCbCr'/'LAB'/'HSV'/'RGBX' (not RGB intensities), 16/32-bit and float:
        rejected; upstream would feed indices or wrong values.
    A channel count that differs from the model's: rejected (upstream crashes).
Every rejection says to convert the file, or to use --processing resize, which converts.

Post-processing a013c80: softmax (C > 1) / sigmoid (C == 1) of the logits (torch float32), torchvision
ToPILImage (x * 255 truncated to uint8; mode 'L'/'LA'/'RGB'/'RGBA' by channel count), PIL BILINEAR resize to
(W, H) (Pillow resizes 'LA'/'RGBA' through premultiplied alpha, reproduced by going through PIL), /255, then p
> threshold (C == 1) or arg-max (first index on ties). ToPILImage cannot take more than 4 channels (upstream
crashes); here each channel is then resized as its own 'L' image - a documented extension. Saved PNG: mode
'L', argmax * 255 // C ({0, 127} for 2 classes); single-channel: mask * 255.

Post-processing 21d7850: F.interpolate(logits, (H, W), bilinear, align_corners=False), then arg-max (C > 1) or
sigmoid > threshold (C == 1). Saved PNG: mask_values[class]; mode '1' when mask_values == [0, 1] (the
default), RGB for a list of lists, else 'L'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.processing import ops
from pipeline.processing.base import Prepared, Processing, image_array
from pipeline.processing.convert import HIGH_BIT_MODES

if TYPE_CHECKING:
    from pipeline.models import ModelFamily

INTENSITY_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
PIL_MODE_FOR_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
DEFAULT_SCALE = 0.5  # predict.py's --scale default


class MilesialPinnedProcessing(Processing):
    """milesial predict.py at a013c80: resize by --scale, softmax, 8-bit PIL resize back, arg-max."""

    name = "milesial-a013c80"
    description = ("milesial predict.py at a013c80 (the seed's commit): resize by --scale (default 0.5), "
                   "softmax, 8-bit PIL bilinear resize back, arg-max.")
    options = frozenset({"scale"})
    divides_always = True

    def __init__(self, *, scale: float, **common: Any) -> None:
        super().__init__(**common)
        self.scale = scale

    @classmethod
    def _build(cls, family: ModelFamily, common: dict[str, Any], *, scale: float | None,
               input_size: tuple[int, int] | None) -> Processing:
        if family.input_divisor > 1:
            raise ConfigError(
                f"--processing {cls.name} resizes each image by --scale, which gives sizes that are not "
                f"multiples of {family.input_divisor}, as the {family.name} network needs. Use --processing "
                f"{family.default_processing} (its own path), resize or model-res.")
        return cls(scale=cls._scale(scale, DEFAULT_SCALE), **common)

    # -- preprocessing -----------------------------------------------------------------------------------

    def prepare(self, image: Image.Image) -> Prepared:
        width, height = image.size
        new_w, new_h = int(self.scale * width), int(self.scale * height)
        if new_w <= 0 or new_h <= 0:
            raise InputError(
                f"The image is {width}x{height}; --scale {self.scale} makes it {new_w}x{new_h}, which has no "
                "pixels. Use a larger --scale for images this small.")
        self._check_mode(image)
        array = image_array(image.resize((new_w, new_h), Image.Resampling.BICUBIC))
        if not self.divides_always and array.max(initial=0) <= 1:
            # 21d7850 divides by 255 only if some value is > 1: 0/1 values are fed as 0.0/1.0.
            array = array * np.uint8(255)
        return Prepared(array, self._meta(image, (new_h, new_w)))

    def _check_mode(self, image: Image.Image) -> None:
        mode = image.mode
        fix = (f"Convert it to {PIL_MODE_FOR_CHANNELS.get(self.in_channels, 'the model')!s} first, or use "
               "--processing resize, which converts")
        if mode in ("P", "PA"):
            raise InputError(
                f"The image is a palette ({mode!r}) image: milesial's predict.py would feed palette indices, "
                f"not colours, to the network. {fix}.")
        if mode in HIGH_BIT_MODES:
            raise InputError(
                f"The image is a {mode!r} image (16/32-bit or float): milesial's predict.py would divide "
                f"those values by 255 and feed values far above 1. {fix} (8-bit).")
        if mode == "1":
            if self.divides_always:
                raise InputError(
                    "The image is a 1-bit ('1') image: milesial a013c80 divides by 255 and would read white "
                    f"as 1/255. {fix} (to 'L'), or use --processing milesial-21d7850, which reads 0/1 as "
                    "0.0/1.0.")
            channels = 1
        elif mode in INTENSITY_MODES:
            channels = INTENSITY_MODES[mode]
        else:
            raise InputError(
                f"The image is a {mode!r} image, whose values are not RGB or grey intensities: milesial's "
                f"predict.py would feed them unchanged. {fix}.")
        if channels != self.in_channels:
            raise InputError(
                f"The image has {channels} channel(s) ({mode!r}) but the model takes {self.in_channels}: "
                f"milesial's predict.py feeds the file's channels unchanged and would fail. {fix}.")

    # -- post-processing ---------------------------------------------------------------------------------

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        height, width = self.original_size(meta)
        probs = ops.to_probabilities(scores, self.output_kind)
        quantised = probs.mul(255).byte().numpy()  # torchvision ToPILImage on float input: truncation
        resized = _pil_bilinear(quantised, (width, height))
        if self.num_classes == 1:
            unit = resized[0].astype(np.float32) / np.float32(255)  # torchvision ToTensor
            return ops.above_threshold(unit, self.threshold)
        return ops.argmax_channels(resized)  # / 255 is monotonic: arg-max on the bytes is the same

    def upstream_png(self, classes: np.ndarray, mask_values: list[Any] | None = None) -> Image.Image:
        """predict.py's mask_to_image at a013c80: 'L', class * 255 // C (single-channel: mask * 255)."""
        classes = np.asarray(classes, dtype=np.int64)
        if self.num_classes == 1:
            values = classes * 255
        else:
            values = classes * 255 // self.num_classes
        return Image.fromarray(values.astype(np.uint8))


class MilesialHeadProcessing(MilesialPinnedProcessing):
    """milesial predict.py at 21d7850: resize by --scale, bilinear resize of the logits, arg-max."""

    name = "milesial-21d7850"
    description = ("milesial predict.py at 21d7850 (HEAD): resize by --scale (default 0.5), bilinear resize "
                   "of the logits back, arg-max; PNG via mask_values.")
    divides_always = False

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        resized = ops.resize_bilinear(scores, self.original_size(meta))
        return ops.decide(resized, self.output_kind, self.threshold)

    def upstream_png(self, classes: np.ndarray, mask_values: list[Any] | None = None) -> Image.Image:
        """predict.py's mask_to_image at 21d7850: pixel = mask_values[class] (default [0, 1] -> mode '1')."""
        values = [0, 1] if mask_values is None else list(mask_values)
        if not values:
            raise ConfigError("mask_values is empty: it must list one value per class (e.g. [0, 1]).")
        height, width = np.shape(classes)
        if isinstance(values[0], (list, tuple)):
            out = np.zeros((height, width, len(values[0])), dtype=np.uint8)
        elif values == [0, 1]:
            out = np.zeros((height, width), dtype=bool)
        else:
            out = np.zeros((height, width), dtype=np.uint8)
        for index, value in enumerate(values):
            try:
                out[classes == index] = value
            except (OverflowError, ValueError) as err:
                raise ConfigError(f"mask_values[{index}] = {value!r} does not fit an 8-bit PNG ({err}): "
                                  "mask values must be 0..255 (or RGB triplets of them).") from err
        return Image.fromarray(out)


def _pil_bilinear(channels: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(C, h, w) uint8 -> (C, H, W) uint8 through PIL BILINEAR in ToPILImage's mode for C (more than 4
    channels: one 'L' image per channel)."""
    count = channels.shape[0]
    if count > 4:
        return np.stack([_pil_bilinear(channels[c:c + 1], size_wh)[0] for c in range(count)])
    mode = PIL_MODE_FOR_CHANNELS[count]
    hwc = np.ascontiguousarray(channels.transpose(1, 2, 0))
    image = Image.frombytes(mode, (hwc.shape[1], hwc.shape[0]), hwc.tobytes())
    resized = np.asarray(image.resize(size_wh, Image.Resampling.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return resized.transpose(2, 0, 1)

