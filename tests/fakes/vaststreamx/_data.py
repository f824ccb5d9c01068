"""Enums, images and tensors, and the host <-> device copies."""

from __future__ import annotations

import enum

import numpy as np

from vaststreamx._device import fake_die_ids


class ImageFormat(enum.IntEnum):
    """Codes as VastStreamX-Samples' common/utils.py maps them."""

    YUV_NV12 = 0
    RGB_PLANAR = 5000
    BGR_PLANAR = 5001
    RGB_INTERLEAVE = 5002
    BGR_INTERLEAVE = 5003
    GRAY = 5004


class StreamBalanceMode(enum.IntEnum):
    ONCE = 0
    RUN = 1


class GraphOutputType(enum.IntEnum):
    GRAPH_OUTPUT_TYPE_NCHW_DEVICE = 0
    GRAPH_OUTPUT_TYPE_NCHW_HOST = 1
    GRAPH_OUTPUT_TYPE_884_DEVICE = 2


class AttrKey(enum.IntEnum):
    IIMAGE_FORMAT = 0
    RESIZE_WIDTH = 1
    RESIZE_HEIGHT = 2


def _image_shape(fmt: ImageFormat, width: int, height: int) -> tuple[int, ...]:
    if fmt in (ImageFormat.RGB_PLANAR, ImageFormat.BGR_PLANAR):
        return (3, height, width)
    if fmt in (ImageFormat.RGB_INTERLEAVE, ImageFormat.BGR_INTERLEAVE):
        return (height, width, 3)
    if fmt == ImageFormat.GRAY:
        return (height, width)
    return (height * 3 // 2, width)  # YUV_NV12


class Image:
    """A uint8 image on a die."""

    def __init__(self, array: np.ndarray, fmt: ImageFormat, width: int, height: int, device_id: int) -> None:
        self._array = array
        self.format = fmt
        self.width = width
        self.height = height
        self.device_id = device_id

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape


class Tensor:
    """An array on a die."""

    def __init__(self, array: np.ndarray, device_id: int) -> None:
        self._array = array
        self.device_id = device_id

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype


def create_image(array: np.ndarray, fmt: ImageFormat, width: int, height: int, device_id: int) -> Image:
    """Copy a host uint8 image to die `device_id`, from any thread: the zoo's UNet runner creates images in a
    thread that never calls set_device. It belongs to that die; `Stream.run_sync` refuses it on another.

    Strict: the array must be a C-contiguous uint8 ndarray whose shape fits `fmt`, `width` and `height`, and
    the die must exist.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"create_image(): expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"create_image(): expected uint8 pixels, got {array.dtype}")
    if not array.flags["C_CONTIGUOUS"]:
        raise ValueError("create_image(): the array must be C-contiguous (np.ascontiguousarray)")
    if not isinstance(fmt, ImageFormat):
        raise ValueError(f"create_image(): fmt must be a vaststreamx.ImageFormat, got {fmt!r}")
    expected = _image_shape(fmt, width, height)
    if array.shape != expected:
        raise ValueError(f"create_image(): a {fmt.name} image of {width}x{height} has shape {expected}, "
                         f"got {array.shape}")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id not in fake_die_ids():
        raise ValueError(f"create_image(): device_id {device_id!r} is not a die of this machine")
    return Image(array.copy(), fmt, width, height, device_id)


def as_numpy(item: Tensor | Image) -> np.ndarray:
    """Device -> host copy, from any thread (the zoo's runner reads outputs in a thread bound to no die)."""
    if not isinstance(item, (Tensor, Image)):
        raise TypeError(f"as_numpy(): expected a vaststreamx Tensor or Image, got {type(item).__name__}")
    return item._array.copy()
