"""The run's N worst images by per-image IoU, read from its Parquet mask shards (never recomputed).

Choosing reads three small columns (`id`, `source`, `iou`) of each `masks/part-*.parquet`; the encoded masks
(`mask_png`, the bulk of the bytes) are then read only from the files that hold a chosen row. On S3 each file
is opened for random access (exact ranged GETs: the footer and those columns, never the masks in between),
several files at a time, so a run of millions of images costs a few bytes per image to rank.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import fs
from pipeline.io.images import decode_png_mask
from pipeline.io.outputs import MASKS

CHOICE_COLUMNS = ("id", "source", "iou")
MASK_COLUMNS = ("mask_png", "shard", "row")
READ_THREADS = 16  # files read at once: S3 latency, not bandwidth, bounds a listing of small files


@dataclass(frozen=True)
class Ranked:
    """One scored image: where its row is (`file`, `index` within the file) and its per-image IoU."""

    iou: float
    id: str
    source: str
    file: str
    index: int


@dataclass(frozen=True)
class WorstSelection:
    ranked: tuple[Ranked, ...]  # lowest IoU first; ties by id
    num_ranked: int  # images with a per-image IoU
    num_unranked: int  # images without one (every label pixel ignored)


@dataclass(frozen=True)
class PredictedRow:
    ranked: Ranked
    prediction: np.ndarray  # (H, W) class indices, as the run wrote them
    shard: int
    row: int


def mask_files(output: str, s3: fs.S3Options | None = None) -> list[str]:
    """The run's Parquet mask shards, `<output>/masks/part-*.parquet`, sorted."""
    storage = fs.storage_for(output, s3)
    return sorted(uri for page in storage.iter_files(fs.join(output, MASKS)) for uri in page
                  if fs.basename(uri).startswith("part-") and uri.endswith(".parquet"))


def read_columns(uri: str, columns: Sequence[str], s3: fs.S3Options | None = None) -> pa.Table:
    """Only `columns` of one Parquet file (local read, or S3 ranged reads of the footer and those columns)."""
    with fs.storage_for(uri, s3).open(uri, random_access=True) as handle:
        return pq.ParquetFile(handle).read(columns=list(columns))


def select_worst(output: str, count: int, s3: fs.S3Options | None = None) -> WorstSelection:
    """The `count` lowest per-image IoUs of the run, from the `id`/`source`/`iou` columns only."""
    worst: list[Ranked] = []
    ranked = unranked = 0

    def key(r: Ranked) -> tuple[float, str, str, int]:
        return (r.iou, r.id, r.file, r.index)

    files = mask_files(output, s3)
    with ThreadPoolExecutor(max(1, min(READ_THREADS, len(files)))) as pool:
        tables = pool.map(lambda uri: read_columns(uri, CHOICE_COLUMNS, s3), files)
        for uri, table in zip(files, tables, strict=True):
            candidates = []
            columns = (table.column(c).to_pylist() for c in CHOICE_COLUMNS)
            for index, (item_id, source, iou) in enumerate(zip(*columns, strict=True)):
                if iou is None or math.isnan(iou):
                    unranked += 1
                    continue
                ranked += 1
                candidates.append(Ranked(float(iou), item_id, source, uri, index))
            worst = heapq.nsmallest(count, worst + candidates, key=key)
    return WorstSelection(tuple(worst), ranked, unranked)


def read_predictions(selection: Sequence[Ranked], s3: fs.S3Options | None = None) -> list[PredictedRow]:
    """The masks of the chosen rows (in `selection` order), reading `mask_png` only from their files."""
    by_file: dict[str, list[Ranked]] = {}
    for item in selection:
        by_file.setdefault(item.file, []).append(item)
    found: dict[tuple[str, int], PredictedRow] = {}
    for uri, items in by_file.items():
        table = read_columns(uri, MASK_COLUMNS, s3).take(pa.array([item.index for item in items]))
        for item, png, shard, row in zip(items, *(table.column(c).to_pylist() for c in MASK_COLUMNS),
                                          strict=True):
            found[(uri, item.index)] = PredictedRow(item, decode_png_mask(png), int(shard), int(row))
    return [found[(item.file, item.index)] for item in selection]
