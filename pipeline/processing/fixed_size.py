"""Fixed-size modes: "resize" (the seed document's Resize + ToTensor), "model-res", "zhixuhao".

"model-res" scores at network resolution, as the seed table's mIoU was measured (and as Vastai's model zoo
evaluates); "zhixuhao" is zhixuhao/unet's test path.

"resize" and "model-res" preprocessing: convert to the model's channels (1 -> 'L', 3 -> 'RGB' via PIL convert:
alpha dropped, palettes expanded; 16/32-bit and float images rejected), PIL BILINEAR resize to exactly
--input-size (H, W) (torchvision's Resize with an (h, w) tuple on a PIL image; PIL antialiases when
downscaling), / 255. Default size: the family's default_input_size.

Post-processing: "resize" resizes the network output (logits, or probabilities for probability outputs) back
to the image size (bilinear, align_corners=False) and takes the arg-max (single channel: sigmoid(logits) >
threshold, or probability > threshold). "model-res" decides at the network size and resizes the *label* to the
network size instead (PIL NEAREST), so its masks are network-sized.

"zhixuhao": greyscale ('L'; PIL's ITU-R 601 luma for colour files), PIL BILINEAR to --input-size (default
256x256), / 255. Upstream (`testGenerator`) uses skimage.transform.resize on the float image (bilinear,
reflect borders, Gaussian anti-aliasing with sigma = (factor - 1) / 2 when downscaling); skimage is not a
dependency and the pipeline ships uint8 images, so PIL's antialiasing bilinear (a triangle filter over the
same footprint, rounded to 8 bits) stands in: inputs differ by about one grey level, not a different image.
(Upstream also reads colour files with rgb2gray and then divides by 255 a second time, a bug not reproduced.)
The network ends in a sigmoid; upstream saves the 256x256 probability map unthresholded. Here the probability
map is resized back to the image size (bilinear, align_corners=False) and thresholded (class 1 = prob >
threshold = white = cell interior), so masks have the image's own size. `upstream_png` writes that thresholded
mask * 255 ('L'), since the probability map is gone by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.processing import ops
from pipeline.processing.base import Prepared, Processing, image_array
from pipeline.processing.convert import CHANNEL_MODES, convert_to_channels, resize

if TYPE_CHECKING:
    from pipeline.models import ModelFamily


class ResizeProcessing(Processing):
    """Resize to --input-size, arg-max of the logits resized back to the image size."""

    name = "resize"
    description = ("Resize(input_size) + ToTensor: convert to the model's channels, PIL bilinear to "
                   "--input-size (default: the model's), logits resized back, arg-max.")
    options = frozenset({"input_size"})
    default_size: tuple[int, int] | None = None  # None: the family's default_input_size

    def __init__(self, *, input_size: tuple[int, int], **common: Any) -> None:
        super().__init__(**common)
        self.input_size = input_size

    @classmethod
    def _build(cls, family: ModelFamily, common: dict[str, Any], *, scale: float | None,
               input_size: tuple[int, int] | None) -> Processing:
        cls._check_channels(common["in_channels"])
        requested = input_size if input_size is not None else cls.default_size
        return cls(input_size=cls._input_size(family, requested, cls.name), **common)

    @classmethod
    def _check_channels(cls, in_channels: int) -> None:
        if in_channels not in CHANNEL_MODES:
            raise ConfigError(
                f"--processing {cls.name} converts images to greyscale (1 channel) or RGB (3), but the model "
                f"takes {in_channels} channels. Use --processing milesial-a013c80, which feeds the file's "
                "own channels.")

    def prepare(self, image: Image.Image) -> Prepared:
        converted = convert_to_channels(image, self.in_channels, self.name)
        height, width = self.input_size
        resized = resize(converted, (width, height), Image.Resampling.BILINEAR)
        return Prepared(image_array(resized), self._meta(image, self.input_size))

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        resized = ops.resize_bilinear(scores, self.output_size(meta))
        return ops.decide(resized, self.output_kind, self.threshold)


class ModelResProcessing(ResizeProcessing):
    """Resize to --input-size; masks and labels scored at the network size."""

    name = "model-res"
    description = ("Evaluation at model resolution (how the seed table's mIoU was measured): as resize, but "
                   "masks stay at --input-size and labels are resized to it (nearest).")

    def output_size(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        return self.network_size(meta)

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        return ops.decide(scores, self.output_kind, self.threshold)

    def prepare_label(self, label: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        """(H, W) uint8 label -> (h, w) at the network size, PIL NEAREST (255 = ignore survives)."""
        height, width = self.network_size(meta)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        if label.shape == (height, width):
            return label
        return np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))


class ZhixuhaoProcessing(ResizeProcessing):
    """zhixuhao testGenerator: greyscale, resize to --input-size, probability map back to size, threshold."""

    name = "zhixuhao"
    description = ("zhixuhao/unet main.py: greyscale, bilinear to --input-size (default 256), probability "
                   "map resized back to the image size, > --threshold (1 = white).")
    default_size = (256, 256)  # main.py's target_size

    @classmethod
    def _check_channels(cls, in_channels: int) -> None:
        if in_channels != 1:
            raise ConfigError(
                f"--processing zhixuhao feeds greyscale images, but the model takes {in_channels} channels. "
                "Use --processing resize or model-res, which convert to the model's channels.")

    def finish(self, output: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
        scores = self._check_output(output, meta)
        probs = ops.to_probabilities(scores, self.output_kind)
        return ops.decide(ops.resize_bilinear(probs, self.output_size(meta)), "probabilities", self.threshold)

    def upstream_png(self, classes: np.ndarray, mask_values: list[Any] | None = None) -> Image.Image:
        """The thresholded mask * 255 ('L'): upstream saves the raw probability map, which `finish` no longer
        has."""
        return Image.fromarray((np.asarray(classes, dtype=np.uint8) * np.uint8(255)).astype(np.uint8))
