"""Parsing the sizes and shapes users type: `512`, `256x320`, `3x512x512`, `256,512`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.errors import ConfigError

_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*")

SizeLike = str | int | Sequence[int] | None


def parse_size(text: SizeLike, option: str = "--input-size") -> tuple[int, int] | None:
    """`N` or `HxW` (or an int, or a pair) -> (H, W); None stays None.

    Example:
        >>> parse_size("512"), parse_size("256x320"), parse_size([128, 96])
        ((512, 512), (256, 320), (128, 96))
    """
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ConfigError(f"Expected {option} as N or HxW (e.g. 512 or 256x320), got {list(text)!r}.")
        height, width = int(text[0]), int(text[1])
    elif isinstance(text, int):
        height = width = text
    else:
        match = _SIZE.fullmatch(str(text))
        if not match:
            raise ConfigError(f"Expected {option} as N or HxW (e.g. 512 or 256x320), got {text!r}.")
        height = int(match.group(1))
        width = int(match.group(2) or height)
    if height <= 0 or width <= 0:
        raise ConfigError(f"{option} must be positive, got {text!r}.")
    return height, width


def parse_sizes(text: str | Sequence[SizeLike] | None, option: str = "--shapes",
                ) -> tuple[tuple[int, int] | None, ...]:
    """`256,512` or `256x320 512` (or a list of sizes) -> ((256, 256), (512, 512)); empty -> (None,).

    Example:
        >>> parse_sizes("256,320x480")
        ((256, 256), (320, 480))
    """
    if text is None or text == "" or (isinstance(text, (list, tuple)) and not text):
        return (None,)
    items = [t for t in re.split(r"[,\s]+", text) if t] if isinstance(text, str) else list(text)
    return tuple(parse_size(item, option) for item in items)


def parse_shape(text: str | None, in_channels: int | None = None, option: str = "--shape",
                ) -> tuple[int, int, int] | None:
    """`CxHxW`, or `HxW` / `N` when the model's `in_channels` is known -> (C, H, W).

    Example:
        >>> parse_shape("3x512x512"), parse_shape("256", in_channels=1)
        ((3, 512, 512), (1, 256, 256))
    """
    if text is None or text == "":
        return None
    tokens = [t.strip() for t in str(text).lower().replace(",", "x").split("x")]
    if not 1 <= len(tokens) <= 3 or not all(t.isdigit() and int(t) > 0 for t in tokens):
        raise ConfigError(f"Expected {option} as CxHxW (e.g. 3x512x512), HxW or N, got {text!r}.")
    values = [int(t) for t in tokens]
    if len(values) == 3:
        channels, height, width = values
        if in_channels is not None and channels != in_channels:
            raise ConfigError(f"{option} {text}: the model takes {in_channels} input channel(s), the shape "
                              f"says {channels}. Use {in_channels}x{height}x{width}.")
        return channels, height, width
    if in_channels is None:
        raise ConfigError(f"Expected {option} as CxHxW (e.g. 3x512x512), got {text!r}.")
    height, width = (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
    return in_channels, height, width
