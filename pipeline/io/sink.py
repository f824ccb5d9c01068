"""The run's single writer: masks to Parquet and/or PNG, per-image scores, and a commit record per part.

One pass does everything: `write()` (a Ray task) scores each row against its label, encodes the mask, writes the
files, and returns the part's confusion-matrix sum; `on_write_complete()` (on the driver) collects those sums.
A part is the rows of one shard that arrived in one block. Its files are named by shard and first row, so a
re-run overwrites rather than duplicates, and its commit record (`_run/parts/...json`) is written last: a part
without a record is incomplete and is redone by `--resume`. Every file is written whole or not at all (local:
temporary file + rename; S3: one PUT). A part whose rows include a storage failure (stage "storage") is counted in
this run's metrics but left uncommitted, so `--resume` tries those inputs again instead of keeping the failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import Datasink

from pipeline.io import fs
from pipeline.io.images import encode_png
from pipeline.io.source import STORAGE_STAGE
from pipeline.metrics import confusion_matrix, image_dice, image_scores
from pipeline.stages import failed, unpack

MASK_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("mask_png", pa.binary()), ("pixel_accuracy", pa.float64()), ("iou", pa.float64()), ("dice", pa.float64()),
    ("confusion", pa.list_(pa.int64())), ("model", pa.string()), ("shard", pa.int64()), ("row", pa.int64()),
])
ERROR_FIELDS = ("shard", "row", "id", "source", "label_source", "error_stage", "error_class", "error")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(item_id: str) -> str:
    """A file name for an input id that cannot leave its folder: no '/', no leading dot, at most 150 characters.

    Ids that had to be changed get a short hash of the original, so two different ids never share a name.

    Example:
        >>> safe_name("2007_000032")
        '2007_000032'
        >>> safe_name("../../etc/passwd")
        '_.._etc_passwd-936d7c04cd'
    """
    name = _SAFE.sub("_", item_id).lstrip(".")[:120]
    if name != item_id or not name:
        digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:10]
        name = f"{name or 'item'}-{digest}"
    return name


def parts_dir(output: str) -> str:
    return fs.join(output, "_run", "parts")


@dataclass(frozen=True)
class SinkSettings:
    output: str
    formats: tuple[str, ...]  # subset of ("parquet", "png")
    num_classes: int
    score: bool
    model_name: str
    s3: fs.S3Options | None = None


def _table(block: Any) -> pa.Table:
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)


class MaskSink(Datasink[list[dict]]):
    """Writes masks, scores and commit records; `parts` holds the committed records after the write."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.parts: list[dict] = []

    def get_name(self) -> str:
        return "Masks"

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[dict]:
        records = []
        for block in blocks:
            table = _table(block)
            if table.num_rows == 0:
                continue
            shards = np.asarray(table.column("shard").to_numpy(zero_copy_only=False))
            for shard in np.unique(shards):
                rows = table.filter(pa.compute.equal(table.column("shard"), pa.scalar(int(shard), pa.int64())))
                records.append(self._write_part(int(shard), rows.to_pylist()))
        return records

    def on_write_complete(self, write_result: Any) -> None:
        self.parts = [record for records in write_result.write_returns for record in records]

    def _write_part(self, shard: int, rows: list[dict]) -> dict:
        s = self.settings
        rows.sort(key=lambda r: r["row"])
        name = f"part-{shard:06d}-{rows[0]['row'] + 1:06d}"  # row -1 (a container error) sorts first
        total = np.zeros((s.num_classes, s.num_classes), np.int64)
        dice_sum, scored, errors, out_rows, files = 0.0, 0, [], [], []
        for row in rows:
            if failed(row["error"]):
                errors.append({k: row[k] for k in ERROR_FIELDS})
                continue
            mask = unpack(row["mask"], row["mask_shape"])
            accuracy = iou = dice = None
            matrix = None
            if s.score:
                matrix = confusion_matrix(unpack(row["label"], row["label_shape"]), mask, s.num_classes)
                total += matrix
                accuracy, iou = image_scores(matrix)
                dice = image_dice(matrix)
                dice_sum += dice
                scored += 1
            png = encode_png(mask, num_classes=s.num_classes)
            if "png" in s.formats:
                uri = fs.join(s.output, "png", safe_name(row["id"]) + ".png")
                fs.write_bytes(uri, png, s.s3)
                files.append(uri)
            out_rows.append({
                "id": row["id"], "source": row["source"], "height": mask.shape[0], "width": mask.shape[1],
                "mask_png": png, "pixel_accuracy": accuracy, "iou": iou, "dice": dice,
                "confusion": None if matrix is None else matrix.ravel().tolist(), "model": s.model_name,
                "shard": shard, "row": row["row"],
            })
        if "parquet" in s.formats and out_rows:
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(out_rows, schema=MASK_SCHEMA), buffer, compression="zstd")
            uri = fs.join(s.output, "masks", name + ".parquet")
            fs.write_bytes(uri, buffer.getvalue(), s.s3)
            files.append(uri)
        record = {
            "part": name, "shard": shard, "rows": [r["row"] for r in rows], "num_ok": len(out_rows),
            "num_errors": len(errors), "num_scored": scored, "confusion": total.ravel().tolist(),
            "dice_sum": dice_sum, "errors": errors, "files": files,
        }
        # A storage failure is not the input's fault: leave the part uncommitted so that --resume redoes it.
        record["committed"] = not any(e["error_stage"] == STORAGE_STAGE for e in errors)
        if record["committed"]:
            fs.write_bytes(fs.join(parts_dir(s.output), name + ".json"), json.dumps(record).encode("utf-8"), s.s3)
        return record
