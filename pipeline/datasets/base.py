"""What a dataset layout is: a streaming list of inputs, and the rule that turns its label files into classes.

Two kinds of layout exist. File layouts (voc, carvana, isbi, pairs, folder) list one `Item` per image, with
the URI of its label; container layouts (parquet, webdataset) list container files, each holding many samples.
Either way the listing is a generator over pages of a directory listing, so a bucket of millions of objects is
never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.config import DataConfig
from pipeline.errors import ConfigError, InputError
from pipeline.io import fs
from pipeline.io.images import IGNORE_INDEX, IMAGE_EXTENSIONS, decode_class_indices
from pipeline.labels import NO_IGNORE, UNMAPPED, label_map_pairs, label_table, label_values_map


@dataclass(frozen=True)
class Item:
    """One input of a file layout. `image` is None when a label's image is missing (recorded as an error)."""

    id: str
    image: str | None
    label: str | None


@dataclass(frozen=True)
class LabelRule:
    """How raw label pixels become class indices for one run (`pipeline.labels`): ignored pixels become
    `IGNORE_INDEX` (255), which no scoring counts."""

    layout: str
    num_classes: int
    mapping: Mapping[int, int] | None = None  # raw value -> class (255: ignored); None: values are classes
    binarize_at: int | None = None  # isbi: value > binarize_at -> 1 else 0
    ignore_index: int | None = IGNORE_INDEX  # this value (after the mapping) is not scored
    table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", label_table(self.num_classes, self.mapping, self.ignore_index))

    def __call__(self, image: Image.Image) -> np.ndarray:
        values = decode_class_indices(image, layout=self.layout)
        if self.binarize_at is not None:
            return (values > self.binarize_at).astype(np.uint8)
        out = self.table[values]
        if (out == UNMAPPED).any():
            raise InputError(self._unmapped_message(values[out == UNMAPPED]))
        return out.astype(np.uint8)

    def _unmapped_message(self, values: np.ndarray) -> str:
        bad = [int(v) for v in np.unique(values)[:8]]
        ignored = "nothing ignored" if self.ignore_index is None else f"{self.ignore_index} = ignore"
        if self.mapping is not None:
            named = sorted(self.mapping)
            names = str(named) if len(named) <= 12 else f"{len(named)} raw values"
            return (f"The {self.layout} label holds pixel values {bad} that are not classes (the label map "
                    f"names {names}; {ignored}): check that this is a label of this layout, or map those "
                    "values with --label-map RAW:CLASS (or RAW:ignore).")
        return (f"The label holds values {bad} outside the model's {self.num_classes} classes "
                f"(0..{self.num_classes - 1}; {ignored}): the label does not fit this model. 0/255 masks "
                "need --label-values 0,255 (255 -> class 1) or --layout carvana|isbi; other raw values "
                "--label-map RAW:CLASS; or check the checkpoint's number of classes.")


@dataclass(frozen=True)
class Layout:
    """A dataset layout. Subclasses implement `items` (file layouts) or `containers` + `read_container`."""

    name: str = ""
    description: str = ""
    has_labels: bool = True
    class_names: tuple[str, ...] | None = None
    ignore_index: int | None = IGNORE_INDEX  # the label value not scored unless --ignore-index says otherwise

    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        raise NotImplementedError

    def label_rule(self, num_classes: int, options: DataConfig) -> LabelRule:
        return LabelRule(self.name, num_classes, mapping=user_label_map(options, num_classes),
                         ignore_index=self.ignore_for(options))

    def ignore_for(self, options: DataConfig) -> int | None:
        """The label value not scored: --ignore-index, else the layout's (None: every value is a class)."""
        if options.ignore_index is None:
            return self.ignore_index
        return None if options.ignore_index == NO_IGNORE else int(options.ignore_index)

    def names_for(self, num_classes: int) -> tuple[str, ...]:
        if self.class_names is not None and len(self.class_names) == num_classes:
            return self.class_names
        return tuple(f"class_{i}" for i in range(num_classes))


def user_label_map(options: DataConfig, num_classes: int) -> dict[int, int] | None:
    """Raw value -> class from --label-map or --label-values (None when neither is given)."""
    if options.label_map is not None and options.label_values is not None:
        raise ConfigError("--label-map and --label-values both map raw label values: give one of them "
                          f"(--label-values {','.join(map(str, options.label_values))} is --label-map "
                          f"{','.join(f'{v}:{i}' for i, v in enumerate(options.label_values))}).")
    if options.label_map is not None:
        return label_map_pairs(options.label_map, num_classes)
    if options.label_values is not None:
        return label_values_map(options.label_values)
    return None


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
