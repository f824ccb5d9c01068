"""Every kind of bad input the pipeline must record and step over, added to a `pairs` dataset of good images.

`add_bad_inputs(root)` adds the files and returns, per input id, what its one error record must say: the
stage, which file the message names, and a word of the fix it gives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.demo.synthetic import make_sample

MAX_PIXELS = 50_000  # the runs' --max-pixels: the good images (at most 160 x 160) are below it


@dataclass(frozen=True)
class BadInput:
    stage: str  # error_stage of its record
    names: str  # "image" or "label": the file its message must name
    fix: str  # a word of the fix its message must give


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _scramble(data: bytes, start: int, length: int = 64) -> bytes:
    out = bytearray(data)
    for i in range(start, min(start + length, len(out))):
        out[i] ^= 0x5A
    return bytes(out)


def add_bad_inputs(root: Path) -> dict[str, BadInput]:
    """Write the bad inputs into root/images and root/masks (pairs layout); returns id -> expected record."""
    images, masks = root / "images", root / "masks"
    expected: dict[str, BadInput] = {}
    index = iter(range(900, 1000))

    def sample() -> tuple[Image.Image, Image.Image]:
        return make_sample(next(index))

    def bad_image(item_id: str, ext: str, data: bytes, stage: str, fix: str,
                  label: Image.Image | None = None):
        (images / f"{item_id}{ext}").write_bytes(data)
        (label or sample()[1]).save(masks / f"{item_id}.png")
        expected[item_id] = BadInput(stage, "image", fix)

    def bad_label(item_id: str, image: Image.Image, data: bytes, fix: str):
        image.save(images / f"{item_id}.png")
        (masks / f"{item_id}.png").write_bytes(data)
        expected[item_id] = BadInput("label", "label", fix)

    image, label = sample()
    jpeg, png, gif = _encode(image, "JPEG"), _encode(image, "PNG"), _encode(image.convert("P"), "GIF")
    bad_image("empty", ".png", b"", "decode", "re-export")
    bad_image("truncated_jpeg", ".jpg", jpeg[: len(jpeg) // 2], "decode", "re-download")
    bad_image("truncated_png", ".png", png[: len(png) // 2], "decode", "re-download")
    bad_image("truncated_gif", ".gif", gif[: len(gif) // 2], "decode", "re-download")
    bad_image("corrupt_jpeg", ".jpg", _scramble(jpeg, 20, 40), "decode", "re-download")  # broken header
    bad_image("corrupt_png", ".png", _scramble(png, len(png) // 2), "decode",
              "re-download")  # broken zlib stream
    bad_image("corrupt_gif", ".gif", _scramble(gif, len(gif) // 2), "decode",
              "re-download")  # broken LZW stream
    bad_image("not_an_image", ".jpg", b"name,value\nthis is a CSV file,1\n" * 20, "decode", "remove it")
    bad_image("html_page", ".png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "decode",
              "remove it")
    # Colour modes milesial's predict.py would feed wrongly (it never converts): refused at preprocessing.
    bad_image("cmyk", ".jpg", _encode(image.convert("CMYK"), "JPEG"), "preprocess", "convert", label)
    grey16 = (np.asarray(image.convert("L"), np.uint16) * 257).astype(np.uint16)
    bad_image("grey16", ".png", _encode(Image.fromarray(grey16), "PNG"), "preprocess", "convert", label)
    bad_image("palette", ".png", _encode(image.convert("P"), "PNG"), "preprocess", "convert", label)
    bad_image("rgba", ".png", _encode(image.convert("RGBA"), "PNG"), "preprocess", "convert", label)
    bad_image("grey", ".png", _encode(image.convert("L"), "PNG"), "preprocess", "convert", label)
    # Above --max-pixels: a genuine large image, and a decompression bomb (5000 x 5000 zeros, a few KB of
    # PNG).
    large = Image.new("RGB", (300, 300), (90, 120, 150))
    bad_image("too_large", ".png", _encode(large, "PNG"), "decode", "--max-pixels", Image.new("L", (300,
                                                                                                    300)))
    bad_image("bomb", ".png", _encode(Image.new("L", (5000, 5000)), "PNG"), "decode", "--max-pixels")
    # Labels that do not fit their image or the model.
    image, label = sample()
    wider = Image.new("L", (label.width + 8, label.height))
    bad_label("label_size", image, _encode(wider, "PNG"), "re-export")
    outside = np.asarray(label).copy()
    outside[:4, :4] = 9  # the model has 4 classes; 255 (void) elsewhere in the label stays allowed
    bad_label("label_values", image, _encode(Image.fromarray(outside, "L"), "PNG"), "check")
    bad_label("label_corrupt", image, b"\x00\x01garbage, not a PNG" * 10, "remove it")
    bad_label("label_rgb", image, _encode(Image.new("RGB", image.size, (128, 0, 0)), "PNG"), "convert")
    # Pairs that are not pairs.
    sample()[0].save(images / "no_label.png")
    expected["no_label"] = BadInput("read", "label", "add")
    sample()[1].save(masks / "orphan.png")
    expected["orphan"] = BadInput("read", "label", "add the image")
    return expected


def named_file(root: str, item_id: str, names: str) -> str:
    """The URI of the file an error record must name (root: the dataset as the run sees it, local or s3://)."""
    if names == "label":
        return f"{root}/masks/{item_id}.png"
    extension = {"truncated_jpeg": ".jpg", "corrupt_jpeg": ".jpg", "not_an_image": ".jpg", "cmyk": ".jpg",
                 "truncated_gif": ".gif", "corrupt_gif": ".gif"}.get(item_id, ".png")
    return f"{root}/images/{item_id}{extension}"
