"""Layouts whose files each hold many samples: Parquet shards and WebDataset tar shards.

Each container file is one shard of the run. Samples are read in order and streamed (Parquet by record batch,
tar member by member), so a container is never held in memory whole.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.config import DataConfig
from pipeline.datasets.base import Layout
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One sample of a container: raw bytes, or an error explaining why there are none."""

    id: str
    image: bytes | None
    label: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class ContainerLayout(Layout):
    suffix: str = ""

    def containers(self, root: str, s3: fs.S3Options | None = None) -> Iterator[str]:
        storage = fs.storage_for(root, s3)
        if not storage.is_dir(root):
            if storage.exists(root) and root.endswith(self.suffix):
                yield root
                return
            raise ConfigError(f"{self.name} layout: {root} is neither a folder of *{self.suffix} files nor "
                              "one.")
        for page in storage.iter_files(root):
            for uri in page:
                if uri.endswith(self.suffix):
                    yield uri

    def read(self, uri: str, options: DataConfig, s3: fs.S3Options | None,
             expect_labels: bool) -> Iterator[Sample]:
        raise NotImplementedError

    def check(self, uri: str, options: DataConfig, s3: fs.S3Options | None, expect_labels: bool) -> None:
        """Fail early (ConfigError) when the first container does not fit the options; reads one sample."""
        for _ in self.read(uri, options, s3, expect_labels):
            return


_IMAGE_COLUMNS = ("image", "image_bytes", "img", "jpg", "png", "bytes")
_MASK_COLUMNS = ("mask", "mask_bytes", "label", "label_bytes", "segmentation", "mask.png")
_ID_COLUMNS = ("id", "key", "__key__", "name", "image_id", "filename", "path")


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, uri: str,
          required: bool) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise ConfigError(f"{uri}: no column {wanted!r} for the {what}; its columns are {names}.")
        return wanted
    for candidate in candidates:
        if candidate in names:
            return candidate
    if required:
        raise ConfigError(
            f"{uri}: cannot tell which column holds the {what} (looked for {list(candidates)}; columns are "
            f"{names}). Pass --{what.replace(' ', '-')}-column NAME."
        )
    return None


def _as_bytes(value: Any) -> bytes | None:
    """Parquet cells may be raw bytes or Hugging Face's {"bytes": ..., "path": ...} image struct."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value is not None else None


@dataclass(frozen=True)
class ParquetLayout(ContainerLayout):
    """Parquet shards with an image-bytes column and an optional mask-bytes column (class-index PNGs)."""

    def read(self, uri: str, options: DataConfig, s3: fs.S3Options | None,
             expect_labels: bool) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        with fs.storage_for(uri, s3).open(uri) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            image_col = _pick(names, options.image_column, _IMAGE_COLUMNS, "image", uri, True)
            mask_col = _pick(names, options.mask_column, _MASK_COLUMNS, "mask", uri, expect_labels)
            id_col = _pick(names, options.id_column, _ID_COLUMNS, "id", uri, False)
            columns = [c for c in (image_col, mask_col, id_col) if c is not None]
            row = 0
            for batch in parquet.iter_batches(batch_size=64, columns=columns):
                data = batch.to_pydict()
                for i in range(batch.num_rows):
                    sample_id = str(data[id_col][i]) if id_col else f"{fs.stem(uri)}-{row:06d}"
                    image = _as_bytes(data[image_col][i])
                    label = _as_bytes(data[mask_col][i]) if mask_col else None
                    error = None
                    if image is None:
                        error = f"row {row} of {uri} has no image bytes (null {image_col!r})"
                    elif expect_labels and label is None:
                        error = f"row {row} of {uri} has no mask (null {mask_col!r}): a label is missing"
                    yield Sample(sample_id, image, label, error)
                    row += 1




def _split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first '.' of the file name; the rest is the field."""
    directory, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), field.lower()


@dataclass(frozen=True)
class WebDatasetLayout(ContainerLayout):
    """WebDataset tar shards: members `<key>.jpg|png` (the image) and `<key>.mask.png` (class indices)."""

    def read(self, uri: str, options: DataConfig, s3: fs.S3Options | None,
             expect_labels: bool) -> Iterator[Sample]:
        def finish(key: str, fields: dict[str, bytes]) -> Sample:
            image = next((fields[e.lstrip(".")] for e in IMAGE_EXTENSIONS if e.lstrip(".") in fields), None)
            label = fields.get("mask.png")
            if image is None:
                return Sample(key, None, label, f"sample {key!r} of {uri} has a mask but no image member")
            if expect_labels and label is None:
                return Sample(key, image, None,
                              f"sample {key!r} of {uri} has no {key}.mask.png: a label is missing")
            return Sample(key, image, label)

        with fs.storage_for(uri, s3).open(uri) as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            key: str | None = None
            fields: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                member_key, field = _split_member(member.name)
                if member_key != key:
                    if key is not None:
                        yield finish(key, fields)
                    key, fields = member_key, {}
                extracted = tar.extractfile(member)
                fields[field] = extracted.read() if extracted is not None else b""
            if key is not None:
                yield finish(key, fields)


CONTAINER_LAYOUTS = (
    ParquetLayout("parquet", "Parquet shards: an image-bytes column and an optional mask-bytes column",
                  suffix=".parquet"),
    WebDatasetLayout("webdataset", "WebDataset tar shards: <key>.jpg|png and <key>.mask.png members",
                     suffix=".tar"),
)
