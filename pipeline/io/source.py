"""The Ray Data source: one read task per shard, yielding rows of raw image and label bytes.

Nothing is decoded here (decoding is CPU work for the preprocessing tasks). A file that cannot be read becomes
a row with an error instead of failing the task, so good rows that share a shard are never lost. Rows already
committed by an interrupted run (`--resume`) are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipeline.config import DataConfig
from pipeline.datasets import ContainerLayout, Item, Layout
from pipeline.errors import InputError
from pipeline.io import fs
from pipeline.io.manifest import ShardRef, read_items
from pipeline.io.rows import SOURCE_SCHEMA, STORAGE_STAGE, failure_message

_IO_THREADS = 8
_NETWORK_PACKAGES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "s3fs")


def is_storage_failure(err: BaseException) -> bool:
    """A failure of the storage, not of the file: network, 5xx, throttling (after the client's retries).

    Such rows are recorded with stage "storage", and their part is left uncommitted so that `--resume` tries
    them again (see `pipeline.io.sink`); a missing or unreadable file is the input's fault and is recorded for
    good.
    """
    if isinstance(err, InputError):
        return False
    cause: BaseException | None = err
    # s3fs re-raises a 503 SlowDown as OSError(EBUSY) caused by botocore's ClientError
    while cause is not None:
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if type(cause).__module__.split(".")[0] in _NETWORK_PACKAGES:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _root_cause(err: BaseException) -> str:
    """" (caused by X: ...)" for the first exception of the chain, which holds the client's own message."""
    cause = err
    while (parent := cause.__cause__ or cause.__context__) is not None:
        cause = parent
    return f" (caused by {type(cause).__name__}: {cause})" if cause is not err else ""


def _row(shard: int, row: int, item_id: str, source: str, label_source: str = "", image: bytes | None = None,
         label: bytes | None = None, stage: str = "", error: BaseException | None = None) -> dict:
    error_class = message = ""
    if error is not None:
        error_class = type(error).__name__
        message = failure_message(source, error)
        if is_storage_failure(error):
            stage = STORAGE_STAGE
            message += (f"{_root_cause(error)}: the storage failed after its retries; run the same command "
                        "with --resume to try again.")
    return {"shard": shard, "row": row, "id": item_id, "source": source, "label_source": label_source,
            "image": image, "label": label, "error_stage": stage if error is not None else "",
            "error_class": error_class, "error": message}


def _read_item(shard: int, row: int, item: Item, expect_labels: bool, s3: fs.S3Options | None) -> dict:
    label_source = item.label or ""
    if item.image is None:
        return _row(shard, row, item.id, label_source, label_source, stage="read", error=InputError(
            f"label {item.label} has no image: add the image, or remove the label"))
    try:
        image = fs.read_bytes(item.image, s3)
    except Exception as err:  # InputError: missing or unreadable; else storage failed after its own retries
        return _row(shard, row, item.id, item.image, label_source, stage="read", error=err)
    label = None
    if expect_labels:
        if item.label is None:
            return _row(shard, row, item.id, item.image, stage="read", error=InputError(
                f"the {item.id} image has no label in this layout: use `predict` for unlabelled images"))
        try:
            label = fs.read_bytes(item.label, s3)
        except InputError as err:
            return _row(shard, row, item.id, item.image, label_source, stage="read", error=InputError(
                f"{err} It is the label of {item.image}: add it, or use `predict` for unlabelled images."))
        except Exception as err:
            return _row(shard, row, item.id, item.image, label_source, stage="read", error=err)
    return _row(shard, row, item.id, item.image, label_source, image, label)


def read_shard(ref: ShardRef, layout: Layout, options: DataConfig, expect_labels: bool,
               s3: fs.S3Options | None, skip_rows: frozenset[int], block_rows: int,
               only: tuple[int, int] | None = None) -> Iterator[pa.Table]:
    """Blocks of at most `block_rows` rows of one shard, rows numbered in a stable order; `only` = (first,
    end): just those rows of a listed shard."""
    rows: list[dict] = []
    if ref.kind == "items":
        first, end = only or (0, ref.size or 0)
        items = [(i, it) for i, it in enumerate(read_items(ref, s3))
                 if i not in skip_rows and (only is None or first <= i < end)]
        workers = _IO_THREADS if any(fs.is_s3(it.image or it.label or "") for _, it in items) else 1
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_read_item, ref.index, i, it, expect_labels, s3) for i, it in items]
            for future in futures:
                rows.append(future.result())
                if len(rows) >= block_rows:
                    yield pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)
                    rows = []
    else:
        if not isinstance(layout, ContainerLayout):
            raise TypeError(f"shard {ref.uri} is a container but layout {layout.name} reads files")
        try:
            for i, sample in enumerate(layout.read(ref.uri, options, s3, expect_labels)):
                if i in skip_rows:
                    continue
                source = f"{ref.uri}#{sample.id}"
                rows.append(_row(ref.index, i, sample.id, source, source, sample.image, sample.label,
                                 stage="read",
                                 error=None if sample.error is None else InputError(sample.error)))
                if len(rows) >= block_rows:
                    yield pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)
                    rows = []
        except Exception as err:  # everything after the last good sample is one error
            if -1 not in skip_rows:
                if not is_storage_failure(err):
                    err = InputError(f"container {ref.uri} is corrupt or truncated after its last readable "
                                     f"sample ({type(err).__name__}: {err}): re-create the shard")
                rows.append(_row(ref.index, -1, fs.basename(ref.uri), ref.uri, ref.uri, stage="read",
                                 error=err))
    if rows:
        yield pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)


@dataclass(frozen=True)
class ReadUnit:
    """One read task: a shard, or rows [first, end) of a listed shard (`only`), minus the rows committed."""

    shard: ShardRef
    skip: frozenset[int] = frozenset()
    only: tuple[int, int] | None = None

    @property
    def rows(self) -> int | None:
        """How many rows it reads (None for a container: unknown before reading)."""
        if self.shard.size is None:
            return None
        first, end = self.only or (0, self.shard.size)
        return sum(1 for i in range(first, end) if i not in self.skip)


def read_units(shards: Sequence[ShardRef], done: Mapping[int, frozenset[int]], chunk_rows: int,
               tail_shards: int, unit_rows: int | None = None) -> list[ReadUnit]:
    """The read tasks of `shards`: one per shard (per `unit_rows` rows of a shard, when given: big network
    inputs), except the last `tail_shards` listed shards, cut into tasks of `chunk_rows` rows so that the end
    of a run is dealt batch by batch to whichever actor is free (a whole shard on one actor would leave the
    others idle). Rows committed by an earlier attempt (`done`) are skipped; a shard with nothing left is
    dropped."""
    units: list[ReadUnit] = []
    for position, ref in enumerate(shards):
        skip = done.get(ref.index, frozenset())
        if ref.size is not None and len(skip) >= ref.size:
            continue  # completely committed by an earlier attempt
        rows = chunk_rows if position >= len(shards) - tail_shards else unit_rows
        if ref.size is not None and rows is not None and ref.size > rows:
            for first in range(0, ref.size, rows):
                unit = ReadUnit(ref, skip, (first, min(first + rows, ref.size)))
                if unit.rows:
                    units.append(unit)
        else:
            units.append(ReadUnit(ref, skip))
    return units


class ShardDatasource(Datasource):
    """A Datasource with one read task per `ReadUnit` (see `pipeline.io.manifest` for the shards)."""

    def __init__(self, units: Sequence[ReadUnit], layout: Layout, options: DataConfig, expect_labels: bool,
                 s3: fs.S3Options | None, block_rows: int = 1 << 30) -> None:
        self._units = list(units)
        self._layout = layout
        self._options = options
        self._expect_labels = expect_labels
        self._s3 = s3
        self._block_rows = block_rows

    def get_name(self) -> str:
        return "Shards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for unit in self._units:
            read = functools.partial(read_shard, unit.shard, self._layout, self._options, self._expect_labels,
                                     self._s3, unit.skip, self._block_rows, unit.only)
            metadata = BlockMetadata(num_rows=unit.rows, size_bytes=None, input_files=None, exec_stats=None)
            tasks.append(ReadTask(read, metadata, schema=SOURCE_SCHEMA))
        return tasks
