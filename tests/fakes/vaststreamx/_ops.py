"""The VDSP pre-processing fusion op: read from the zoo's JSON; resize + normalise + fp16 on the "device"."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from vaststreamx._data import AttrKey, Image, ImageFormat

FUSION_OPS = {"FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR": 100}  # OpType -> op_type code (>= 100: built-in)
NORM_TYPES = ("DIV255", "DIV255_MINUSMEAN_DIVSTD")


class BuildinOperator:
    """A built-in fusion op and its configuration."""

    def __init__(self, op_type_name: str, config: dict) -> None:
        self.op_type = FUSION_OPS[op_type_name]
        self.config = config
        self.image_format = ImageFormat[config["IimageFormat"]]
        self.output_size = (int(config["OimageHeight"]), int(config["OimageWidth"]))
        self.norm_type = config["NormaType"]
        self.mean = np.asarray(config.get("Mean", ()), np.float32)
        self.std = np.asarray(config.get("Std", ()), np.float32)

    @property
    def attributes(self) -> dict[str, int]:
        """Keyed by name: VastStreamX-Samples tests `"IIMAGE_FORMAT" in op.attributes.keys()`."""
        return {AttrKey.IIMAGE_FORMAT.name: int(self.image_format),
                AttrKey.RESIZE_WIDTH.name: self.output_size[1],
                AttrKey.RESIZE_HEIGHT.name: self.output_size[0]}

    def cast_to_buildin_operator(self) -> BuildinOperator:
        return self

    def get_attribute(self, key: AttrKey) -> int:
        return self.attributes[AttrKey(key).name]

    def process(self, image: Image) -> np.ndarray:
        """One image -> the model input, (c, H, W) float16 (see the package docstring, "Numerics")."""
        if image.format != self.image_format:
            raise RuntimeError(f"run_sync(): the pre-processing op takes {self.image_format.name} images, "
                               f"got {image.format.name}")
        pixels = image._array.astype(np.float32)
        if pixels.ndim == 2:  # GRAY
            pixels = pixels[None]
        if pixels.shape[1:] != self.output_size:
            resized = F.interpolate(torch.from_numpy(pixels)[None], size=self.output_size, mode="bilinear",
                                    align_corners=False)
            pixels = resized[0].numpy()
        x = pixels / np.float32(255)
        if self.norm_type == "DIV255_MINUSMEAN_DIVSTD":
            channels = x.shape[0]
            x = (x - self.mean[:channels, None, None]) / self.std[:channels, None, None]
        return x.astype(np.float16)


class Operator:
    @staticmethod
    def load_ops_from_json_file(path: str) -> list[BuildinOperator]:
        """The ops a VDSP JSON describes; [] for a missing file, bad JSON or an op unknown to this runtime."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            op_type, config = data["OpType"], data["OpConfig"]
            if op_type not in FUSION_OPS or config["NormaType"] not in NORM_TYPES:
                return []
            return [BuildinOperator(op_type, config)]
        except (OSError, ValueError, KeyError, TypeError):
            return []
