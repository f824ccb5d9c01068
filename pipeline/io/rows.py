"""The rows that flow between the stages of a run, and their codec: one place for every column name.

    read task ──SOURCE_COLUMNS──> preprocess task ──PREPARED_COLUMNS──> inference actor ──PREDICTED_COLUMNS──>
    sink

Every row carries its identity (shard, row, id, source, label_source) and its error cells (stage, class,
message) from the read task to the sink, so a row that fails anywhere keeps flowing with `error` set and its
payload dropped, and ends as a recorded error. Images travel as raw uint8 bytes plus a "h,w[,c]" shape string,
so no stage depends on Ray's tensor extension types. The sink writes `MASK_SCHEMA` rows to Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

IDENTITY_COLUMNS = ("shard", "row", "id", "source", "label_source")
ERROR_COLUMNS = ("error_stage", "error_class", "error")
PASSTHROUGH_COLUMNS = IDENTITY_COLUMNS + ERROR_COLUMNS
"""Carried unchanged by every stage."""

SOURCE_SCHEMA = pa.schema([
    ("shard", pa.int64()), ("row", pa.int64()), ("id", pa.string()), ("source", pa.string()),
    ("label_source", pa.string()), ("image", pa.binary()), ("label", pa.binary()),
    ("error_stage", pa.string()), ("error_class", pa.string()), ("error", pa.string()),
])
"""Rows of the read tasks: raw image and label bytes, nothing decoded."""

PREPARED_COLUMNS = PASSTHROUGH_COLUMNS + ("height", "width", "net", "net_shape", "meta", "label",
                                          "label_shape")
"""Rows of the preprocess tasks: the network-size image (`net`), its processing `meta` (JSON), the label."""

PREDICTED_COLUMNS = PASSTHROUGH_COLUMNS + ("height", "width", "label", "label_shape", "mask", "mask_shape")
"""Rows of the inference actors: the class-index mask at the output size, the label passed through."""

MASK_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("mask_png", pa.binary()), ("pixel_accuracy", pa.float64()), ("iou", pa.float64()), ("dice",
                                                                                         pa.float64()),
    ("confusion", pa.list_(pa.int64())), ("model", pa.string()), ("shard", pa.int64()), ("row", pa.int64()),
])
"""Rows of the Parquet mask parts (`masks/part-*.parquet`): one per image."""

IMAGE_STATS_SCHEMA = pa.schema([
    ("id", pa.string()), ("shard", pa.int64()), ("row", pa.int64()), ("confusion", pa.list_(pa.int64())),
])
"""Rows of the per-image matrices (`_run/images/part-*.parquet`), written by every scoring run."""

CONFUSION_SHAPE_KEY = b"confusion_shape"
"""Schema metadata of every Parquet file with a `confusion` column: "C,C", the shape of its row-major flat
list (rows = ground truth, columns = prediction), so a reader need not guess C from the list's length."""


def with_confusion_shape(schema: pa.Schema, num_classes: int) -> pa.Schema:
    """`schema` with the `confusion` column's shape (C, C) recorded in its metadata."""
    return schema.with_metadata({
        **(schema.metadata or {}), CONFUSION_SHAPE_KEY: f"{num_classes},{num_classes}",
        b"confusion_layout": b"row-major; rows = ground truth, columns = prediction"})


def confusion_classes(schema: pa.Schema) -> int | None:
    """C of a file's (C, C) `confusion` lists, from its schema metadata (None: files of older versions)."""
    shape = (schema.metadata or {}).get(CONFUSION_SHAPE_KEY)
    return int(shape.decode().split(",")[0]) if shape else None


STORAGE_STAGE = "storage"
"""Error stage of a row whose storage failed (network, 5xx) after client retries: retried by --resume."""

MAX_MESSAGE_CHARS = 2000  # an exception with a huge text must not bloat errors.jsonl


@dataclass(frozen=True)
class ErrorRecord:
    """One input that failed: a line of errors.jsonl and an entry of its part's commit record."""

    shard: int
    row: int
    id: str
    source: str
    label_source: str
    error_stage: str
    error_class: str
    error: str

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> ErrorRecord:
        return cls(**{name: row[name] for name in PASSTHROUGH_COLUMNS})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorRecord:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PASSTHROUGH_COLUMNS}


def pack(array: np.ndarray) -> tuple[bytes, str]:
    """Raw bytes and a "h,w[,c]" shape string of a uint8 array.

    Example:
        >>> pack(np.zeros((2, 3), np.uint8))
        (b'\\x00\\x00\\x00\\x00\\x00\\x00', '2,3')
    """
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes(), ",".join(str(d) for d in array.shape)


def unpack(data: bytes, shape: str) -> np.ndarray:
    """The uint8 array `pack` encoded (read-only: it views `data`)."""
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(int(d) for d in shape.split(",")))


def failed(error: Any) -> bool:
    """Whether a row's `error` cell records a failure ("" or a missing value means the row is good)."""
    return isinstance(error, str) and error != ""


def failure_message(path: str, err: BaseException | str) -> str:
    """The error text recorded for one input: names the file (unless the message does), capped in size."""
    message = str(err) or type(err).__name__
    if path and path not in message:
        message = f"{path}: {message}"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 15] + " ...(truncated)"
    return message


def record_failure(row: dict[str, list], i: int, stage: str, err: BaseException) -> None:
    """Mark row `i` of a column dict failed; a label's failure names the label file, any other the image."""
    path = row["label_source"][i] if stage == "label" and row["label_source"][i] else row["source"][i]
    row["error_stage"][i] = stage
    row["error_class"][i] = type(err).__name__
    row["error"][i] = failure_message(path, err)


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array of `values` (bytes, str, None): the batch format Ray Data passes between stages."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column
