"""Writing a run's results one part at a time: masks to Parquet and/or PNG, per-image scores, a commit record.

The inference actor that predicted a batch writes and commits it before it takes the next one
(`pipeline.pool`), so results reach storage within milliseconds of their inference and never wait in Ray's
object store. A part is the rows of one shard in one batch. Its files are named by shard and first row, so a
re-run overwrites rather than duplicates, and its commit record is written last (`pipeline.io.commits`): a
part without a record is incomplete and is redone by `--resume`. Every file is written whole or not at all
(local: temporary file + rename; S3: one PUT), and named relative to the output in the record, so a run folder
can be moved or copied and still resumed. A part whose rows include a storage failure (stage "storage") is
counted in this run's metrics but left uncommitted, so `--resume` tries those inputs again instead of keeping
the failure.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import fs
from pipeline.io.commits import PartRecord, write_record
from pipeline.io.images import encode_png
from pipeline.io.outputs import image_stats_name, mask_part_name, part_name, png_name
from pipeline.io.rows import (
    IMAGE_STATS_SCHEMA,
    MASK_SCHEMA,
    STORAGE_STAGE,
    ErrorRecord,
    failed,
    unpack,
    with_confusion_shape,
)
from pipeline.metrics import ConfusionAccumulator

WRITER = f"{socket.gethostname()}:{os.getpid()}"  # the process writing parts (an inference actor)
PngEncoder = Callable[[np.ndarray], bytes]
"""(H, W) uint8 class mask -> the PNG file's bytes."""


@dataclass(frozen=True)
class PartSettings:
    """What the parts of one run hold, and where they go (picklable: it travels to the inference actors).

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


def write_parts(settings: PartSettings, columns: Mapping[str, np.ndarray]) -> list[PartRecord]:
    """Write and commit the rows of one predicted batch (`pipeline.io.rows.PREDICTED_COLUMNS`), one part per
    shard among them; returns the parts' records."""
    inferred_at = time.time()
    count = len(columns["id"])
    rows = [{key: _plain(values[i]) for key, values in columns.items()} for i in range(count)]
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_shard.setdefault(int(row["shard"]), []).append(row)
    return [write_part(settings, shard, shard_rows, inferred_at) for shard,
            shard_rows in sorted(by_shard.items())]


def write_part(s: PartSettings, shard: int, rows: list[dict[str, Any]], inferred_at: float | None = None,
               ) -> PartRecord:
    """Score, encode and write the rows of one part, then commit it (unless a row's storage failed)."""
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
            relative = png_name(row["id"])
            fs.write_bytes(fs.join(s.output, relative), png if s.png_file is None else s.png_file(mask), s.s3)
            files.append(relative)
        out_rows.append({
            "id": row["id"], "source": row["source"], "height": mask.shape[0], "width": mask.shape[1],
            "mask_png": png, "pixel_accuracy": None if image is None else image.pixel_accuracy,
            "iou": None if image is None else image.iou, "dice": None if image is None else image.dice,
            "confusion": None if image is None else image.matrix.ravel().tolist(), "model": s.model_name,
            "shard": shard, "row": row["row"],
        })
    if "parquet" in s.formats and out_rows:
        files.append(_write_table(s, mask_part_name(name), out_rows, MASK_SCHEMA))
    if s.score and out_rows:  # per-image matrices for intervals and run comparison, whatever --format says
        stats = [{k: r[k] for k in ("id", "shard", "row", "confusion")} for r in out_rows]
        files.append(_write_table(s, image_stats_name(name), stats, IMAGE_STATS_SCHEMA))
    # A storage failure is not the input's fault: leave the part uncommitted so that --resume redoes it.
    committed = not any(e.error_stage == STORAGE_STAGE for e in errors)
    inferred = time.time() if inferred_at is None else inferred_at
    record = PartRecord(part=name, shard=shard, rows=tuple(r["row"] for r in rows), num_ok=len(out_rows),
                        num_errors=len(errors), scores=scores, errors=tuple(errors), files=tuple(files),
                        committed=committed, inferred_at=inferred, written_at=time.time(), actor=WRITER)
    if committed:
        write_record(s.output, record, s.s3)
    return record


def _write_table(s: PartSettings, relative: str, rows: list[dict[str, Any]], schema: pa.Schema) -> str:
    buffer = io.BytesIO()
    schema = with_confusion_shape(schema, s.num_classes)  # the flat `confusion` lists are C x C
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    fs.write_bytes(fs.join(s.output, relative), buffer.getvalue(), s.s3)
    return relative


def _plain(value: Any) -> Any:
    """numpy scalars (object columns out of Ray Data hold np.int64) as Python values, so records serialise."""
    return value.item() if isinstance(value, np.generic) else value
