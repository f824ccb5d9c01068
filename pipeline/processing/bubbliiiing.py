"""bubbliiiing/unet-pytorch's predict path (`Unet.get_miou_png` / `detect_image`).

Preprocessing: `cvtColor` (an image numpy sees as H x W x 3 is kept; any other mode is `convert('RGB')`ed:
greyscale, palette, RGBA (alpha dropped), CMYK...; 16/32-bit and float images are rejected, because PIL's
conversion clips them at 255); letterbox to --input-size (H, W) (default 512x512): scale = min(w / iw, h / ih)
in float64, nw = int(iw * scale), nh = int(ih * scale), PIL BICUBIC resize to (nw, nh), pasted on a (128, 128,
128) RGB canvas at ((w - nw) // 2, (h - nh) // 2); / 255; no mean/std.

Post-processing: softmax over the classes (torch float32, on the channels-last view as upstream does), crop
the letterbox, bilinear resize of the *probabilities* to the original size (OpenCV INTER_LINEAR upstream; here
torch's half-pixel bilinear without antialias, equal to ~1e-6, so a handful of pixels can flip on near-ties),
arg-max (first index on ties). A single-channel network (outside upstream, whose softmax over one channel is
always 1) gets sigmoid > threshold instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.processing import ops
from pipeline.processing.base import Prepared, Processing, image_array
from pipeline.processing.convert import reject_high_bit_depth, resize

if TYPE_CHECKING:
    from pipeline.models import ModelFamily

CANVAS_GREY = (128, 128, 128)


def letterbox_geometry(image_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where `resize_image` puts an image: (left, top, nw, nh).

    Args:
        image_size: (iw, ih) of the image (PIL order).
        input_size: (h, w) of the network input.
    """
    iw, ih = image_size
    h, w = input_size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    return (w - nw) // 2, (h - nh) // 2, nw, nh


def cvt_color(image: Image.Image) -> Image.Image:
    """bubbliiiing's `cvtColor`: keep an image numpy sees as H x W x 3, `convert('RGB')` anything else."""
    reject_high_bit_depth(image, "bubbliiiing")
    if len(image.getbands()) == 3:
        return image
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise InputError(f"The {image.mode!r} image cannot be converted to RGB ({err}): save it as an "
                         "8-bit RGB image.") from err


class BubbliiiingProcessing(Processing):
    """bubbliiiing get_miou_png: letterbox, softmax, crop, bilinear resize of probabilities, arg-max."""

    name = "bubbliiiing"
    description = ("bubbliiiing unet.py get_miou_png: RGB, letterbox on grey to --input-size (default "
                   "512), softmax, crop, bilinear resize of probabilities, arg-max.")
    options = frozenset({"input_size"})

    def __init__(self, *, input_size: tuple[int, int], **common: Any) -> None:
        super().__init__(**common)
        self.input_size = input_size

    @classmethod
    def _build(cls, family: ModelFamily, common: dict[str, Any], *, scale: float | None,
               input_size: tuple[int, int] | None) -> Processing:
        if common["in_channels"] != 3:
            raise ConfigError(
                f"--processing bubbliiiing feeds RGB images, but the model takes {common['in_channels']} "
                "channel(s). Use --processing resize or model-res, which convert to the model's channels.")
        return cls(input_size=cls._input_size(family, input_size, cls.name), **common)

    def prepare(self, image: Image.Image) -> Prepared:
        rgb = cvt_color(image)
        left, top, nw, nh = letterbox_geometry(rgb.size, self.input_size)
        if nw <= 0 or nh <= 0:
            raise InputError(
                f"The image is {rgb.size[0]}x{rgb.size[1]}: letterboxed into {self.input_size[1]}x"
                f"{self.input_size[0]} it would be {nw}x{nh} pixels. Crop such extreme aspect ratios first.")
        canvas = Image.new("RGB", (self.input_size[1], self.input_size[0]), CANVAS_GREY)
        canvas.paste(resize(rgb, (nw, nh), Image.Resampling.BICUBIC), (left, top))
        return Prepared(image_array(canvas), self._meta(image, self.input_size, box=[left, top, nw, nh]))

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        left, top, nw, nh = (int(v) for v in meta["box"])
        size = self.original_size(meta)
        if self.num_classes == 1:
            probs = ops.to_probabilities(scores, self.output_kind)[:, top:top + nh, left:left + nw]
            return ops.above_threshold(ops.resize_bilinear(probs, size), self.threshold)
        tensor = ops.as_tensor(scores)
        if self.output_kind == "probabilities":
            cropped = tensor[:, top:top + nh, left:left + nw].contiguous()
        else:
            # Upstream: F.softmax(pr.permute(1, 2, 0), dim=-1), then crop. The softmax is per pixel, so
            # cropping first gives the same values with less work; it must run over the last dim of the
            # channels-last view (the channel-dim kernel sums in another order and differs in the last bit).
            import torch

            hwc = tensor.permute(1, 2, 0)[top:top + nh, left:left + nw]
            cropped = torch.softmax(hwc, dim=-1).permute(2, 0, 1).contiguous()
        return ops.argmax_channels(ops.resize_bilinear(cropped, size))
