"""Decoding image and label bytes safely: size limits, truncation, and label values checked per layout.

Everything here turns a bad file into an `InputError` whose message names the problem and the fix; the
pipeline records it against the input and goes on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; above this an input is treated as a decompression bomb
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")  # what layouts list
IGNORE_INDEX = 255  # label value not scored (VOC's "void"); class masks are uint8, so at most 255 classes

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))

# The VOC colour palette (class index -> RGB), also used for any mask with up to 21 classes.
VOC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
)


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Colours for class indices: VOC's for the first 21, then a deterministic spread of hues."""
    import colorsys

    colours = list(VOC_PALETTE[:num_classes])
    extra = num_classes - len(colours)
    for i in range(extra):
        r, g, b = colorsys.hsv_to_rgb(i / max(extra, 1), 0.8, 0.9)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> Image.Image:
    """Decode image bytes completely (so truncation is caught here, not later).

    The pixel limit is checked on the header, before any pixel is decompressed, so a decompression bomb costs
    nothing. Pillow's own bomb warning (at ~89 M pixels) is silenced because `max_pixels` is the limit that
    applies; Pillow's hard error (at twice that) still refuses larger files, whatever `max_pixels` says.

    Raises:
        InputError: empty, not an image, truncated or corrupt, or above `max_pixels`.
    """
    if not data:
        raise InputError(f"The {what} file is empty (0 bytes): re-export or remove it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"The {what} is {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels}: it may be a decompression bomb. Raise --max-pixels if the file is "
                    "genuine.")
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"The {what} is above Pillow's own hard pixel limit ({err}), which --max-pixels "
                         "cannot raise: downscale the image, or remove it.") from err
    except UnidentifiedImageError as err:
        raise InputError(_unidentified(what, data)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(
            f"The {what} is truncated or corrupt ({type(err).__name__}: {err}): re-download or remove it."
        ) from err
    if image.mode in ("P", "PA") and what == "image":
        image.info.pop("transparency", None)
    return image


def _unidentified(what: str, data: bytes) -> str:
    """Why Pillow found no image: a known signature with a broken header, or not an image file at all."""
    kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if kind is not None:
        return (f"The {what} starts like a {kind} file but its header is corrupt: re-download or re-export "
                "it, or remove it.")
    return (f"The {what} is not an image file (it starts with {data[:12]!r}): another kind of file carries "
            "an image extension. Remove it or replace it with the real image.")


def decode_class_indices(image: Image.Image, *, layout: str) -> np.ndarray:
    """A label image whose pixel values are class indices (palette 'P' or greyscale 'L'), as uint8 (H, W)."""
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 255:
            return values.astype(np.uint8)
        raise InputError(
            f"The {layout} label is a {image.mode} image with values up to {int(values.max())}: class "
            "indices must be 0..254 (255 = ignore). Save labels as 8-bit 'L' or palette 'P' PNGs."
        )
    raise InputError(
        f"The {layout} label is a {image.mode} image: labels must hold one class index per pixel (8-bit 'L' "
        "or palette 'P'), not colours. Convert colour masks to class indices first."
    )


def check_same_size(image_size: tuple[int, int], label: np.ndarray) -> None:
    """Labels must have the size of their image: (W, H) of the image vs (H, W) of the label array."""
    width, height = image_size
    if label.shape[:2] != (height, width):
        raise InputError(
            f"The label is {label.shape[1]}x{label.shape[0]} but its image is {width}x{height}: a label must "
            "have the size of its image. Re-export the label at the image's size."
        )


def encode_png(array: np.ndarray, *, num_classes: int | None = None, compress_level: int = 1) -> bytes:
    """PNG bytes of a (H, W) uint8 class-index mask.

    With `num_classes`, a palette ('P') PNG whose indices are the classes, coloured with
    `palette(num_classes)` (VOC's colours for up to 21 classes); without it, a greyscale ('L') PNG of the
    indices.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape
    if num_classes is None:
        image = Image.frombytes("L", (width, height), array.tobytes())
    else:
        image = Image.frombytes("P", (width, height), array.tobytes())
        flat = [v for colour in palette(num_classes) for v in colour]
        image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png_mask(data: bytes) -> np.ndarray:
    """The class indices stored by `encode_png` (palette indices or 'L' values)."""
    image = Image.open(io.BytesIO(data))
    return np.asarray(image, dtype=np.uint8)
