"""Layouts of one file per image, with labels found by name: voc, carvana, isbi, pairs, folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import DataConfig
from pipeline.datasets.base import Item, LabelRule, Layout, existing_stems, iter_files, user_label_map
from pipeline.errors import ConfigError, InputError
from pipeline.io import fs

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
_PAGE = 1000


@dataclass(frozen=True)
class PairedLayout(Layout):
    """Images in one folder, labels in another, matched by file stem: `<mask_dir>/<stem><mask_suffix>`.

    After the images, the label folder is listed too, and every label without an image becomes an error item
    (image None), so each input file ends as a result or an error.
    """

    image_dir: str = "images"
    mask_dir: str = "masks"
    mask_suffix: str = ".png"

    def _dirs(self, root: str, options: DataConfig) -> tuple[str, str, str]:
        return (
            fs.join(root, options.image_dir or self.image_dir),
            fs.join(root, options.mask_dir or self.mask_dir),
            options.mask_suffix or self.mask_suffix,
        )

    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        image_dir, mask_dir, suffix = self._dirs(root, options)
        storage = fs.storage_for(image_dir, s3)
        if not storage.is_dir(image_dir):
            raise ConfigError(
                f"{self.name} layout: no image folder {image_dir}. Expected "
                f"{root}/{options.image_dir or self.image_dir}/ and "
                f"{root}/{options.mask_dir or self.mask_dir}/ (or pass --image-dir / --mask-dir)."
            )
        for uri in iter_files(image_dir, s3):
            stem = fs.stem(uri)
            yield Item(stem, uri, fs.join(mask_dir, stem + suffix) if self.has_labels else None)
        if self.has_labels:
            yield from self._orphan_labels(image_dir, mask_dir, suffix, s3)

    def _orphan_labels(self, image_dir: str, mask_dir: str, suffix: str, s3: fs.S3Options | None,
                       ) -> Iterator[Item]:
        page: list[tuple[str, str]] = []
        for uri in iter_files(mask_dir, s3, extensions=(suffix,)):
            page.append((fs.basename(uri)[: -len(suffix)], uri))
            if len(page) >= _PAGE:
                yield from self._missing_images(image_dir, page, s3)
                page = []
        yield from self._missing_images(image_dir, page, s3)

    @staticmethod
    def _missing_images(image_dir: str, page: list[tuple[str, str]],
                        s3: fs.S3Options | None) -> Iterator[Item]:
        present = existing_stems(image_dir, [stem for stem, _ in page], s3)
        for stem, uri in page:
            if stem not in present:
                yield Item(stem, None, uri)


@dataclass(frozen=True)
class CarvanaLayout(PairedLayout):
    """Carvana as milesial reads it: labels 0/1 or 0/255 become classes 0/1."""

    def label_rule(self, num_classes: int, options: DataConfig) -> LabelRule:
        if user_label_map(options, num_classes) is not None:
            return super().label_rule(num_classes, options)
        return LabelRule(self.name, num_classes, mapping={0: 0, 1: 1, 255: 1},
                         ignore_index=self.ignore_for(options))


@dataclass(frozen=True)
class IsbiLayout(PairedLayout):
    """ISBI membrane as zhixuhao reads it: label/255 > 0.5 -> 1 (white = cell = 1, black = membrane = 0)."""

    def label_rule(self, num_classes: int, options: DataConfig) -> LabelRule:
        if user_label_map(options, num_classes) is not None:
            return super().label_rule(num_classes, options)
        return LabelRule(self.name, num_classes, binarize_at=127, ignore_index=None)


@dataclass(frozen=True)
class FolderLayout(Layout):
    """Images directly in the given folder; no labels (predict only)."""

    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        if not fs.storage_for(root, s3).is_dir(root):
            raise ConfigError(f"folder layout: {root} is not a folder of images. Pass the folder that holds "
                              "them.")
        for uri in iter_files(root, s3):
            yield Item(fs.stem(uri), uri, None)


@dataclass(frozen=True)
class VocLayout(Layout):
    """PASCAL VOC: ids in ImageSets/Segmentation/<split>.txt, JPEGImages/<id>.jpg, SegmentationClass/<id>.png.

    The root may be the VOC2012 folder itself or a folder holding VOCdevkit/VOC2012 (or bubbliiiing's
    VOC2007).
    """

    def _voc_root(self, root: str, s3: fs.S3Options | None) -> str:
        storage = fs.storage_for(root, s3)
        for candidate in ("", "VOC2012", "VOCdevkit/VOC2012", "VOCdevkit/VOC2007", "VOC2007"):
            base = fs.join(root, candidate)
            if storage.is_dir(fs.join(base, "ImageSets/Segmentation")):
                return base
        raise ConfigError(
            f"voc layout: no ImageSets/Segmentation under {root} (also looked in VOC2012/ and "
            "VOCdevkit/VOC20xx/). Pass the folder that holds JPEGImages/, SegmentationClass/ and ImageSets/."
        )

    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        base = self._voc_root(root, s3)
        split_file = fs.join(base, "ImageSets/Segmentation", f"{options.split}.txt")
        try:
            text = fs.read_bytes(split_file, s3).decode("utf-8")
        except InputError as err:
            raise ConfigError(f"voc layout: split file {split_file} is missing: pass --split "
                              "train|val|trainval.") from err
        for line in text.splitlines():
            image_id = line.strip()
            if image_id:
                yield Item(image_id, fs.join(base, "JPEGImages", image_id + ".jpg"),
                           fs.join(base, "SegmentationClass", image_id + ".png"))


FILE_LAYOUTS = (
    VocLayout("voc",
              "VOC2012: JPEGImages/, SegmentationClass/ (palette PNG, 255 = ignore), ImageSets/Segmentation/"
              "<split>.txt", class_names=VOC_CLASSES),
    CarvanaLayout("carvana", "imgs/<id>.jpg with masks/<id>_mask.gif (0/1 or 0/255 -> classes 0/1)",
                  class_names=("background", "car"), ignore_index=None, image_dir="imgs", mask_dir="masks",
                  mask_suffix="_mask.gif"),
    IsbiLayout("isbi", "image/<i>.png with label/<i>.png; labels 0/255 -> 0 membrane, 1 cell",
               class_names=("membrane", "cell"), ignore_index=None, image_dir="image", mask_dir="label",
               mask_suffix=".png"),
    PairedLayout("pairs", "images/<stem>.* with masks/<stem>.png of class indices (255 = ignore); "
                 "--image-dir/--mask-dir/--mask-suffix change the names"),
    FolderLayout("folder", "a folder of images, no labels (predict only)", has_labels=False),
)
__all__ = ["FILE_LAYOUTS", "VOC_CLASSES"]
