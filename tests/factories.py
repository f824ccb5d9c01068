"""Small datasets in every layout, written by the tests (never downloaded)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo.synthetic import make_sample


def make_sample_pair(index: int, size: tuple[int, int] | None = None, binary: bool = False,
                     ) -> tuple[Image.Image, np.ndarray]:
    """(RGB image, class-index label) of a synthetic sample; `binary` folds the shape classes into class 1."""
    image, label = make_sample(index, size)
    classes = np.asarray(label).copy()
    if binary:
        classes = np.where(classes == 255, 255, (classes > 0).astype(np.uint8)).astype(np.uint8)
    return image, classes


def samples(count: int, first: int = 500, binary: bool = False, size: tuple[int, int] | None = None,
            ) -> list[tuple[str, Image.Image, np.ndarray]]:
    """(id, RGB image, class-index label) triples of synthetic samples; `binary` folds classes to 0/1."""
    out = []
    for index in range(first, first + count):
        image, label = make_sample(index, size)
        classes = np.asarray(label).copy()
        if binary:
            classes = np.where(classes == 255, 255, (classes > 0).astype(np.uint8)).astype(np.uint8)
        out.append((f"s{index:04d}", image, classes))
    return out


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def palette_png(classes: np.ndarray) -> Image.Image:
    image = Image.frombytes("P", (classes.shape[1], classes.shape[0]),
                            np.ascontiguousarray(classes).tobytes())
    image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    return image


def write_pairs(root: Path, items, image_dir="images", mask_dir="masks", suffix=".png", ext=".png") -> Path:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    for item_id, image, classes in items:
        image.save(root / image_dir / f"{item_id}{ext}")
        Image.fromarray(classes, "L").save(root / mask_dir / f"{item_id}{suffix}")
    return root


def write_voc(root: Path, items, split: str = "val") -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for item_id, image, classes in items:
        (base / "JPEGImages" / f"{item_id}.jpg").write_bytes(jpeg_bytes(image))
        palette_png(classes).save(base / "SegmentationClass" / f"{item_id}.png")
    (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _, _ in items))
    return root


def write_carvana(root: Path, items, mask_scale: int = 1) -> Path:
    """imgs/<id>.jpg and masks/<id>_mask.gif with values 0/1 (mask_scale 1) or 0/255 (mask_scale 255)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for item_id, image, classes in items:
        (root / "imgs" / f"{item_id}.jpg").write_bytes(jpeg_bytes(image))
        binary = (np.where(classes == 255, 0, classes) > 0).astype(np.uint8) * mask_scale
        Image.fromarray(binary, "L").convert("P").save(root / "masks" / f"{item_id}_mask.gif")
    return root


def write_isbi(root: Path, items) -> Path:
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "label").mkdir(parents=True, exist_ok=True)
    for item_id, image, classes in items:
        image.convert("L").save(root / "image" / f"{item_id}.png")
        Image.fromarray(((np.where(classes == 255, 0, classes) > 0) * 255).astype(np.uint8), "L").save(
            root / "label" / f"{item_id}.png")
    return root


def write_parquet(root: Path, items, shards: int = 2, with_masks: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        part = items[s::shards]
        data = {"id": [i for i, _, _ in part], "image": [png_bytes(im) for _, im, _ in part]}
        if with_masks:
            data["mask"] = [png_bytes(Image.fromarray(c, "L")) for _, _, c in part]
        pq.write_table(pa.table(data), root / f"part-{s}.parquet")
    return root


def write_webdataset(root: Path, items, shards: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:04d}.tar", "w") as tar:
            for item_id, image, classes in items[s::shards]:
                for name, data in ((f"{item_id}.png", png_bytes(image)),
                                   (f"{item_id}.mask.png", png_bytes(Image.fromarray(classes, "L")))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def write_folder(root: Path, items) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for item_id, image, _ in items:
        image.save(root / f"{item_id}.png")
    return root


# ------------------------------------------------------------------------------------------- one case per
# layout

@dataclass(frozen=True)
class LayoutCase:
    """How the tests write a dataset in one registered layout, and what the pipeline then sees.

    Attributes:
        write: writes (id, RGB image, class-index label) items under a root folder and returns that root.
        input_subdir: where `--input` points inside the root ("" = the root itself).
        binary: the layout's labels hold classes 0/1 (the items' shape classes fold into 1, void into 0).
        in_channels: the images' channels as the layout stores them (isbi: greyscale).
        lossy: images are stored as JPEG (only their size survives exactly).
    """

    write: Callable[[Path, list], Path]
    input_subdir: str = ""
    binary: bool = False
    in_channels: int = 3
    lossy: bool = False

    def ground_truth(self, classes: np.ndarray) -> np.ndarray:
        """The class-index label the layout's label rule should give for an item's written label."""
        if self.binary:
            return (np.where(classes == 255, 0, classes) > 0).astype(np.uint8)
        return classes

    def as_stored(self, image: Image.Image) -> Image.Image:
        """The image as the pipeline decodes it from the file `write` made."""
        if self.lossy:
            image = Image.open(io.BytesIO(jpeg_bytes(image))).convert("RGB")
        return image.convert("L") if self.in_channels == 1 else image


LAYOUT_CASES: dict[str, LayoutCase] = {
    "voc": LayoutCase(write_voc, input_subdir="VOCdevkit/VOC2012", lossy=True),
    "carvana": LayoutCase(write_carvana, binary=True, lossy=True),
    "isbi": LayoutCase(write_isbi, binary=True, in_channels=1),
    "pairs": LayoutCase(write_pairs),
    "folder": LayoutCase(write_folder),
    "parquet": LayoutCase(write_parquet),
    "webdataset": LayoutCase(write_webdataset),
}


def layout_case(name: str) -> LayoutCase:
    """The case of a registered layout; a layout without one fails the test that asks, saying what to add."""
    if name not in LAYOUT_CASES:
        pytest.fail(f"Layout {name!r} is registered in pipeline.datasets.LAYOUTS but tests/factories.py has "
                    f"no LayoutCase for it: add a write_{name.replace('-', '_')}(root, items) writer and "
                    f"LAYOUT_CASES[{name!r}] = LayoutCase(write_...).", pytrace=False)
    return LAYOUT_CASES[name]
