"""What a dataset layout is: a streaming list of inputs, and the rule that turns its label files into classes.

Two kinds of layout exist. File layouts (voc, carvana, isbi, pairs, folder) list one `Item` per image, with
the URI of its label; container layouts (parquet, webdataset) list container files, each holding many samples.
Either way the listing is a generator over pages of a directory listing, so a bucket of millions of objects is
never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.config import DataConfig
from pipeline.io import fs
from pipeline.io.images import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    check_class_range,
    decode_class_indices,
    map_label_values,
)


@dataclass(frozen=True)
class Item:
    """One input of a file layout. `image` is None when a label's image is missing (recorded as an error)."""

    id: str
    image: str | None
    label: str | None


@dataclass(frozen=True)
class LabelRule:
    """How raw label pixels become class indices for one run."""

    layout: str
    num_classes: int
    mapping: Mapping[int, int] | None = None  # raw value -> class; None: values are class indices already
    binarize_at: int | None = None  # isbi: value > binarize_at -> 1 else 0

    def __call__(self, image: Image.Image) -> np.ndarray:
        values = decode_class_indices(image, layout=self.layout)
        if self.binarize_at is not None:
            return (values > self.binarize_at).astype(np.uint8)
        if self.mapping is not None:
            return map_label_values(values, dict(self.mapping), layout=self.layout, ignore_index=IGNORE_INDEX)
        check_class_range(values, self.num_classes, ignore_index=IGNORE_INDEX)
        return values


@dataclass(frozen=True)
class Layout:
    """A dataset layout. Subclasses implement `items` (file layouts) or `containers` + `read_container`."""

    name: str = ""
    description: str = ""
    has_labels: bool = True
    class_names: tuple[str, ...] | None = None

    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        raise NotImplementedError

    def label_rule(self, num_classes: int, options: DataConfig) -> LabelRule:
        if options.label_values is not None:
            mapping = {int(v): i for i, v in enumerate(options.label_values)}
            return LabelRule(self.name, num_classes, mapping=mapping)
        return LabelRule(self.name, num_classes)

    def names_for(self, num_classes: int) -> tuple[str, ...]:
        if self.class_names is not None and len(self.class_names) == num_classes:
            return self.class_names
        return tuple(f"class_{i}" for i in range(num_classes))


def iter_files(directory: str, s3: fs.S3Options | None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
               ) -> Iterator[str]:
    """File URIs directly under `directory` whose extension is one of `extensions`, streamed page by page."""
    storage = fs.storage_for(directory, s3)
    lowered = tuple(e.lower() for e in extensions)
    for page in storage.iter_files(directory):
        for uri in page:
            if uri.lower().endswith(lowered):
                yield uri


def existing_stems(directory: str, stems: Sequence[str], s3: fs.S3Options | None,
                   extensions: Sequence[str] = IMAGE_EXTENSIONS) -> set[str]:
    """Which of `stems` have a file `<directory>/<stem><ext>`, in a few requests per page of stems.

    Local: a stat per candidate. S3: one listing of the key range [min stem, max stem] instead of a HEAD per
    key.
    """
    if not stems:
        return set()
    wanted = set(stems)
    storage = fs.storage_for(directory, s3)
    if not isinstance(storage, fs.S3Storage):
        return {s for s in wanted if any(storage.exists(fs.join(directory, s + e)) for e in extensions)}
    lo, hi = min(wanted), max(wanted)
    found: set[str] = set()
    for uri in storage.iter_range(directory, lo, hi + "\U0010ffff"):
        name = fs.basename(uri)
        for ext in extensions:
            if name.lower().endswith(ext) and name[: -len(ext)] in wanted:
                found.add(name[: -len(ext)])
    return found
