"""Thumbnail strips of one image: the image | its ground truth overlaid | the prediction overlaid.

Each panel is fitted into a `PANEL` x `PANEL` cell (aspect ratio kept, centred), so every strip has the same
size, `STRIP_SIZE`, and the report's grid lines up. Class maps are shrunk with nearest-neighbour sampling (a
class index is never blended with its neighbour) and only then coloured, so a 10k x 10k input costs no more
than a small one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipeline.datasets import IGNORE_INDEX

PANEL = 160
GAP = 4
STRIP_SIZE = (3 * PANEL + 2 * GAP, PANEL)  # (width, height) in pixels
OVERLAY_ALPHA = 0.55
IGNORE_COLOUR = (255, 255, 255)  # label pixels that are not scored (255 = ignore), drawn as a white veil
_CELL_BACKGROUND = (238, 240, 243)


def panel_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) of a picture of `height` x `width` scaled to fit a PANEL x PANEL cell."""
    scale = PANEL / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay(image: Image.Image, classes: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> Image.Image:
    """`image`, greyed, with each pixel tinted by its class colour; black classes (background) stay grey.

    Greying the picture first makes the class colours stand out even where the scene has the same hue (a red
    object under VOC's dark-red class colour). `classes` must have the image's size. Ignored label pixels
    (255) get a white veil.
    """
    table = np.zeros((256, 3), np.float32)
    tinted = np.zeros(256, bool)
    for index, colour in enumerate(colours[:255]):
        table[index] = colour
        tinted[index] = any(colour)
    table[IGNORE_INDEX], tinted[IGNORE_INDEX] = IGNORE_COLOUR, True
    pixels = np.asarray(image.convert("L").convert("RGB"), np.float32)
    weight = (tinted[classes] * OVERLAY_ALPHA)[..., None]
    blended = pixels * (1 - weight) + table[classes] * weight
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def _shrink_classes(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(classes, np.uint8), "L")
    return np.asarray(image.resize(size, Image.Resampling.NEAREST))


def _unavailable(size: tuple[int, int], text: str) -> Image.Image:
    panel = Image.new("RGB", size, (200, 204, 210))
    ImageDraw.Draw(panel).text((6, 6), text, fill=(40, 44, 52))
    return panel


def comparison_strip(image: Image.Image | None, label: np.ndarray | None, prediction: np.ndarray,
                     colours: Sequence[tuple[int, int, int]]) -> bytes:
    """PNG of STRIP_SIZE: image | ground-truth overlay | prediction overlay, all at the prediction's geometry.

    The prediction is the mask the run wrote (at the size it was scored); image and label are resized to it,
    as the run compared them. A missing image or label (moved or deleted since the run) gives a grey panel.
    """
    return _strip(image, label, [prediction], colours)


def paired_strip(image: Image.Image | None, label: np.ndarray | None, prediction_a: np.ndarray | None,
                 prediction_b: np.ndarray | None, colours: Sequence[tuple[int, int, int]]) -> bytes:
    """PNG of image | ground truth | run A's prediction | run B's prediction (`compare`'s changed images).

    A missing prediction (a run written with --format png only) gives a grey panel; at least one is needed
    for the geometry.
    """
    return _strip(image, label, [prediction_a, prediction_b], colours)


def _strip(image: Image.Image | None, label: np.ndarray | None, predictions: Sequence[np.ndarray | None],
           colours: Sequence[tuple[int, int, int]]) -> bytes:
    height, width = next(p for p in predictions if p is not None).shape
    size = panel_size(height, width)
    small_image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR) if image is not None else None
    backdrop = small_image or Image.new("RGB", size, (128, 128, 128))
    panels = [
        small_image if small_image is not None else _unavailable(size, "image\nunavailable"),
        overlay(backdrop, _shrink_classes(label, size), colours)
        if label is not None else _unavailable(size, "label\nunavailable"),
        *(overlay(backdrop, _shrink_classes(p, size), colours) if p is not None
          else _unavailable(size, "prediction\nunavailable") for p in predictions),
    ]
    strip = Image.new("RGB", (len(panels) * PANEL + (len(panels) - 1) * GAP, PANEL), (255, 255, 255))
    for position, panel in enumerate(panels):
        left = position * (PANEL + GAP)
        strip.paste(Image.new("RGB", (PANEL, PANEL), _CELL_BACKGROUND), (left, 0))
        strip.paste(panel, (left + (PANEL - panel.width) // 2, (PANEL - panel.height) // 2))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
