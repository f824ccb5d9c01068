"""A deterministic synthetic segmentation dataset: coloured shapes on textured backgrounds.

Classes: 0 background, 1 disc, 2 square, 3 triangle. Each image has its own size, a background of random
gratings, a colour gradient and noise, and 2-6 shapes that may overlap (the last drawn wins). A band about two
pixels wide along each shape boundary is labelled 255 ("void", ignored by the metrics), as in VOC. Shape
colours lean to one hue per class, with wide variation, so a small network learns both shape and colour cues.

The same index always gives the same image and label (numpy's PCG64 seeded by index).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ("background", "disc", "square", "triangle")
VOID = 255
_HUES = {1: (200, 60, 50), 2: (50, 170, 70), 3: (60, 90, 210)}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(70, 180) + rng.uniform(-20, 20, 3)  # a grey with a mild tint: shapes carry the colour
    for c in range(3):
        gx, gy = rng.uniform(-40, 40, 2)
        image[..., c] = base[c] + gx * xx / width + gy * yy / height
    for _ in range(3):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.05, 0.35)
        amplitude = rng.uniform(6, 22)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        image += (amplitude * wave)[..., None] * rng.uniform(0.5, 1.0, 3)
    return image


def make_sample(index: int, size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """(RGB image, 'L' label of class indices with 255 = void) for one index; `size` is (W, H)."""
    rng = np.random.default_rng(index)
    width, height = size if size is not None else (int(rng.integers(96, 161)), int(rng.integers(96, 161)))
    image = Image.fromarray(np.clip(_background(rng, height, width), 0, 255).astype(np.uint8), "RGB")
    label = Image.new("L", (width, height), 0)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(1, 4))
        largest = min(width, height) / 4
        r = float(rng.uniform(min(14.0, 0.6 * largest), largest))
        cx, cy = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
        if cls == 1:
            box = [cx - r, cy - r, cx + r, cy + r]
            shape: tuple[str, list[Any]] = ("ellipse", box)
        elif cls == 2:
            box = [cx - r, cy - r, cx + r, cy + r]
            shape = ("rectangle", box)
        else:
            turn = rng.uniform(0, 2 * np.pi)
            points = [(cx + r * np.cos(turn + k * 2 * np.pi / 3), cy + r * np.sin(turn + k * 2 * np.pi / 3))
                      for k in range(3)]
            shape = ("polygon", points)
        colour = tuple(int(np.clip(v + rng.normal(0, 22), 0, 255)) for v in _HUES[cls])
        kind, geometry = shape
        getattr(draw_label, kind)(geometry, fill=cls)
        getattr(draw_image, kind)(geometry, fill=colour)
    edges = (np.asarray(label.filter(ImageFilter.MaxFilter(3)))
             != np.asarray(label.filter(ImageFilter.MinFilter(3))))
    label = Image.fromarray(np.where(edges, VOID, np.asarray(label)).astype(np.uint8), "L")
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), np.float32)
    pixels += rng.normal(0, 7, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB"), label


def write_dataset(root: str | os.PathLike, count: int, first_index: int = 0) -> Path:
    """Write `count` samples in the `pairs` layout: root/images/<id>.png and root/masks/<id>.png."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(first_index, first_index + count):
        image, label = make_sample(index)
        name = f"shape_{index:05d}.png"
        image.save(root / "images" / name)
        label.save(root / "masks" / name)
    return root
