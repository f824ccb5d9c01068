"""The run's single writer: masks to Parquet and/or PNG, per-image scores, and a commit record per part.

One pass does everything: `write()` (a Ray task) scores each row against its label, encodes the mask, writes
the files, and returns the part's `PartRecord`; `on_write_complete()` (on the driver) collects them. A part is
the rows of one shard that arrived in one block. Its files are named by shard and first row, so a re-run
overwrites rather than duplicates, and its commit record is written last (`pipeline.io.commits`): a part
without a record is incomplete and is redone by `--resume`. Every file is written whole or not at all (local:
temporary file + rename; S3: one PUT). A part whose rows include a storage failure (stage "storage") is
counted in this run's metrics but left uncommitted, so `--resume` tries those inputs again instead of keeping
the failure.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource import Datasink

from pipeline.io import fs
from pipeline.io.commits import PartRecord, write_record
from pipeline.io.images import encode_png
from pipeline.io.outputs import mask_part_uri, part_name, png_uri
from pipeline.io.rows import MASK_SCHEMA, STORAGE_STAGE, ErrorRecord, failed, unpack
from pipeline.metrics import ConfusionAccumulator

PngEncoder = Callable[[np.ndarray], bytes]
"""(H, W) uint8 class mask -> the PNG file's bytes."""


@dataclass(frozen=True)
class SinkSettings:
    """What the sink writes, and where.

    Attributes:
        output: the run's output folder. formats: subset of ("parquet", "png"). num_classes: classes of the
        masks. score: whether rows carry labels to score. model_name: the model family, stored in every
        Parquet row. s3: S3 options when the output is on S3. png_file: how a mask becomes a PNG file
        (default: the Parquet's PNG: class indices, VOC palette up to 21
            classes; `--png-values upstream`: the upstream predict script's file).
    """

    output: str
    formats: tuple[str, ...]
    num_classes: int
    score: bool
    model_name: str
    s3: fs.S3Options | None = None
    png_file: PngEncoder | None = None


def _table(block: Any) -> pa.Table:
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)


class MaskSink(Datasink[list[PartRecord]]):
    """Writes masks, scores and commit records; `parts` holds the parts' records after the write."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.parts: list[PartRecord] = []

    def get_name(self) -> str:
        return "Masks"

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[PartRecord]:
        records = []
        for block in blocks:
            table = _table(block)
            if table.num_rows == 0:
                continue
            shards = np.asarray(table.column("shard").to_numpy(zero_copy_only=False))
            for shard in np.unique(shards):
                rows = table.filter(pc.equal(table.column("shard"), pa.scalar(int(shard), pa.int64())))
                records.append(write_part(self.settings, int(shard), rows.to_pylist()))
        return records

    def on_write_complete(self, write_result: Any) -> None:
        self.parts = [record for records in write_result.write_returns for record in records]


def write_part(s: SinkSettings, shard: int, rows: list[dict[str, Any]]) -> PartRecord:
    """Score, encode and write one part's rows, then commit it (unless a storage failure is among them)."""
    rows.sort(key=lambda r: r["row"])
    name = part_name(shard, rows[0]["row"])
    scores = ConfusionAccumulator(s.num_classes)
    errors: list[ErrorRecord] = []
    out_rows: list[dict[str, Any]] = []
    files: list[str] = []
    for row in rows:
        if failed(row["error"]):
            errors.append(ErrorRecord.of_row(row))
            continue
        mask = unpack(row["mask"], row["mask_shape"])
        image = scores.update(unpack(row["label"], row["label_shape"]), mask) if s.score else None
        png = encode_png(mask, num_classes=s.num_classes)
        if "png" in s.formats:
            uri = png_uri(s.output, row["id"])
            fs.write_bytes(uri, png if s.png_file is None else s.png_file(mask), s.s3)
            files.append(uri)
        out_rows.append({
            "id": row["id"], "source": row["source"], "height": mask.shape[0], "width": mask.shape[1],
            "mask_png": png, "pixel_accuracy": None if image is None else image.pixel_accuracy,
            "iou": None if image is None else image.iou, "dice": None if image is None else image.dice,
            "confusion": None if image is None else image.matrix.ravel().tolist(), "model": s.model_name,
            "shard": shard, "row": row["row"],
        })
    if "parquet" in s.formats and out_rows:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(out_rows, schema=MASK_SCHEMA), buffer, compression="zstd")
        uri = mask_part_uri(s.output, name)
        fs.write_bytes(uri, buffer.getvalue(), s.s3)
        files.append(uri)
    # A storage failure is not the input's fault: leave the part uncommitted so that --resume redoes it.
    committed = not any(e.error_stage == STORAGE_STAGE for e in errors)
    record = PartRecord(part=name, shard=shard, rows=tuple(r["row"] for r in rows), num_ok=len(out_rows),
                        num_errors=len(errors), scores=scores, errors=tuple(errors), files=tuple(files),
                        committed=committed)
    if committed:
        write_record(s.output, record, s.s3)
    return record
