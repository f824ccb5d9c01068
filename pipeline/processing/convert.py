"""Which decoded images a mode can use, and the colour conversions the modes make.

PIL modes and what they hold:
    'L', 'RGB': 8-bit intensities (the usual case).
    'LA', 'RGBA': 8-bit intensities plus alpha (PIL resizes them through premultiplied alpha).
    '1': 1-bit black/white (numpy gives bools).
    'P', 'PA': palette indices (not intensities; the colours live in the palette).
    'I;16*', 'I', 'F': 16/32-bit or float values; /255 does not put them in [0, 1].
    'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX', ...: 8-bit, but not RGB intensities.

Every rejection is an InputError that names the mode and says how to fix the file or which option converts.
"""

from __future__ import annotations

from PIL import Image

from pipeline.errors import InputError

HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
CHANNEL_MODES = {1: "L", 3: "RGB"}


def reject_high_bit_depth(image: Image.Image, processing: str) -> None:
    """16/32-bit and float images: PIL's 8-bit conversion clips at 255, so ask for an explicit conversion."""
    if image.mode in HIGH_BIT_MODES:
        raise InputError(
            f"The image is a {image.mode!r} image (16/32-bit or float values); --processing {processing} "
            "reads 8-bit images, and clipping or dividing such values by 255 would give wrong intensities. "
            "Convert it to 8-bit first (e.g. divide 16-bit values by 257 and save as 'L' or 'RGB').")


def convert_to_channels(image: Image.Image, channels: int, processing: str) -> Image.Image:
    """Convert any 8-bit image to 'L' (channels 1) or 'RGB' (channels 3), as PIL's `convert` does.

    Alpha is dropped; palettes are expanded; '1' becomes 0/255.

    Raises:
        InputError: high-bit-depth images, or a conversion PIL cannot make.
    """
    target = CHANNEL_MODES[channels]
    reject_high_bit_depth(image, processing)
    if image.mode == target:
        return image
    try:
        return image.convert(target)
    except (ValueError, OSError) as err:
        raise InputError(
            f"The {image.mode!r} image cannot be converted to {target!r} ({err}): save it as an 8-bit "
            f"{'greyscale' if channels == 1 else 'RGB'} image.") from err


def resize(image: Image.Image, size_wh: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """PIL resize to (W, H); a size PIL cannot make becomes an InputError."""
    try:
        return image.resize(size_wh, resample)
    except (ValueError, OSError) as err:
        raise InputError(f"The {image.mode!r} image cannot be resized to {size_wh[0]}x{size_wh[1]} ({err}): "
                         "convert it to 8-bit RGB or greyscale.") from err
