"""The source image and ground truth of a row of a finished run, found the way the run found them.

A mask row records its shard and its row in that shard. The run's manifest (`_run/manifest/index.json` and the
`shard-NNNNNN.jsonl` files) gives the image and label URIs of file layouts; container layouts (parquet,
webdataset) are re-read up to that row. Labels are turned into classes by the layout's own rule with the run's
options, so the report shows exactly the ground truth the run scored against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import DataConfig, section_from
from pipeline.datasets import LAYOUTS, ContainerLayout, LabelRule, Layout
from pipeline.errors import PipelineError
from pipeline.io import fs
from pipeline.io.images import DEFAULT_MAX_PIXELS, open_image
from pipeline.io.manifest import INDEX_NAME, ShardRef, manifest_dir, read_items


@dataclass(frozen=True)
class Source:
    """An input's image and class-index label; None, with `problem` saying why, when it cannot be read now."""

    image: Image.Image | None
    label: np.ndarray | None
    problem: str = ""


class RunSources:
    """Looks up (shard, row) -> Source for one finished run."""

    def __init__(self, output: str, metrics: dict[str, Any], s3: fs.S3Options | None = None) -> None:
        config = metrics.get("config", {})
        self.output = output
        self.s3 = s3
        self.layout: Layout = LAYOUTS.get(metrics["dataset"]["layout"])
        self.options = section_from(config, DataConfig).with_mask_values(metrics.get("model",
                                                                                     {}).get("mask_values"))
        self.rule: LabelRule = self.layout.label_rule(len(metrics["class_names"]), self.options)
        self.max_pixels = int(config.get("max_pixels") or DEFAULT_MAX_PIXELS)

    def _shards(self) -> dict[int, ShardRef]:
        index = json.loads(fs.read_bytes(fs.join(manifest_dir(self.output), INDEX_NAME), self.s3))
        return {s["index"]: ShardRef(s["index"], s["uri"], s["kind"], s["size"]) for s in index["shards"]}

    def _fetch(self, uri: str | None, what: str) -> tuple[bytes | None, str]:
        if uri is None:
            return None, f"the layout gives no {what}"
        try:
            return fs.read_bytes(uri, self.s3), ""
        except PipelineError as err:
            return None, str(err)

    def _raw(self, ref: ShardRef, rows: set[int]) -> dict[int, tuple[bytes | None, bytes | None, str]]:
        """(image bytes, label bytes, problem) of `rows` of one shard."""
        out: dict[int, tuple[bytes | None, bytes | None, str]] = {}
        if ref.kind == "items":
            items = read_items(ref, self.s3)
            for row in rows:
                image, image_problem = self._fetch(items[row].image, "image")
                label, label_problem = self._fetch(items[row].label, "label")
                out[row] = (image, label, " ".join(p for p in (image_problem, label_problem) if p))
            return out
        if not isinstance(self.layout, ContainerLayout):
            raise PipelineError(f"shard {ref.uri} is a container but the run's layout {self.layout.name} is "
                                "not")
        last = max(rows)
        for position, sample in enumerate(self.layout.read(ref.uri, self.options, self.s3, True)):
            if position in rows:
                out[position] = (sample.image, sample.label, sample.error or "")
            if position >= last:
                break
        return out

    def _decode(self, raw: tuple[bytes | None, bytes | None, str] | None) -> Source:
        if raw is None:
            return Source(None, None, "the row is no longer in its shard")
        image_bytes, label_bytes, problem = raw
        image = label = None
        problems = [problem] if problem else []
        if image_bytes is not None:
            try:
                image = open_image(image_bytes, max_pixels=self.max_pixels, what="image")
            except PipelineError as err:
                problems.append(str(err))
        if label_bytes is not None:
            try:
                label = self.rule(open_image(label_bytes, max_pixels=self.max_pixels, what="label"))
            except PipelineError as err:
                problems.append(str(err))
        return Source(image, label, " ".join(problems))

    def lookup(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Source]:
        """(shard, row) -> Source, each shard read once; unreadable inputs get a `problem`, not an error."""
        wanted: dict[int, set[int]] = {}
        for shard, row in keys:
            wanted.setdefault(shard, set()).add(row)
        try:
            shards = self._shards()
        except PipelineError as err:
            return {(s, r): Source(None, None, f"the run's manifest cannot be read: {err}")
                    for s, rows in wanted.items() for r in rows}
        out: dict[tuple[int, int], Source] = {}
        for shard, rows in wanted.items():
            try:
                raw = self._raw(shards[shard], rows)
            except (PipelineError, OSError, KeyError, IndexError) as err:
                for row in rows:
                    out[(shard, row)] = Source(None, None, f"shard {shard} cannot be read now ({err})")
                continue
            for row in rows:
                out[(shard, row)] = self._decode(raw.get(row))
        return out
