"""Cutting a dataset into shards, and remembering the cut so that a resumed run sees the same shards.

A shard is the unit of reading, committing and resuming. For file layouts the listing is streamed into
manifest files of `shard_size` items each (`<run>/_run/manifest/shard-NNNNNN.jsonl`), so the driver never
holds the list of inputs; for container layouts (parquet, webdataset) each container file is a shard.
`index.json`, written last, records the shards; its presence means the listing finished.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import DataConfig
from pipeline.datasets import ContainerLayout, Item, Layout
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.outputs import RUN_STATE

INDEX_NAME = "index.json"


@dataclass(frozen=True)
class ShardRef:
    """One shard: `uri` is its manifest file (kind "items") or the container file (kind "container")."""

    index: int
    uri: str
    kind: str
    size: int | None  # rows, when known before reading (items); None for containers


def manifest_dir(run_dir: str) -> str:
    return fs.join(run_dir, RUN_STATE, "manifest")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def plan_shards(layout: Layout, input_uri: str, options: DataConfig, run_dir: str, shard_size: int,
                s3: fs.S3Options | None = None, reuse: bool = False, expect_labels: bool = False,
                limit: int | None = None) -> list[ShardRef]:
    """List the input once and return its shards, writing the manifest under `run_dir`.

    Container layouts check their first container against the options (columns, labels) before anything runs.
    `limit` keeps only the first N inputs (file layouts; containers are read whole).
    With `reuse`, an existing complete manifest (same input and layout) is returned instead of listing again,
    which is what makes `--resume` see exactly the shards of the interrupted run.
    """
    directory = manifest_dir(run_dir)
    index_uri = fs.join(directory, INDEX_NAME)
    storage = fs.storage_for(index_uri, s3)
    if reuse and storage.exists(index_uri):
        index = json.loads(storage.read_bytes(index_uri))
        if index["input"] != input_uri or index["layout"] != layout.name:
            raise ConfigError(
                f"--resume: the run at {run_dir} was made from {index['input']} ({index['layout']} layout), "
                f"not {input_uri} ({layout.name}). Resume with the same --input/--layout, or pick a new "
                "--output."
            )
        return [ShardRef(s["index"], s["uri"], s["kind"], s["size"]) for s in index["shards"]]

    shards: list[ShardRef] = []
    if isinstance(layout, ContainerLayout):
        if limit is not None:
            raise ConfigError(f"--limit works with file layouts, not with {layout.name} containers: split "
                              "the containers, or score them whole.")
        for i, uri in enumerate(layout.containers(input_uri, s3)):
            if i == 0:
                layout.check(uri, options, s3, expect_labels)
            shards.append(ShardRef(i, uri, "container", None))
    else:
        items = layout.items(input_uri, options, s3)
        if limit is not None:
            items = itertools.islice(items, limit)
        for i, chunk in enumerate(_chunks(items, shard_size)):
            uri = fs.join(directory, shard_name(i) + ".jsonl")
            lines = "".join(json.dumps([it.id, it.image, it.label]) + "\n" for it in chunk)
            storage.write_bytes(uri, lines.encode("utf-8"))
            shards.append(ShardRef(i, uri, "items", len(chunk)))
    if not shards:
        raise ConfigError(
            f"No inputs found in {input_uri} for the {layout.name} layout: check --input and --layout "
            "(`unet-pipeline layouts` lists what each layout expects)."
        )
    index = {"input": input_uri, "layout": layout.name, "shards": [s.__dict__ for s in shards]}
    storage.write_bytes(index_uri, json.dumps(index).encode("utf-8"))
    return shards


def read_items(ref: ShardRef, s3: fs.S3Options | None = None) -> list[Item]:
    """The items of one "items" shard, in manifest order (row i of the shard = line i)."""
    lines = fs.read_bytes(ref.uri, s3).decode("utf-8").splitlines()
    return [Item(*json.loads(line)) for line in lines if line]
