"""A finished run's per-image confusion statistics, streamed from its Parquet mask parts.

Reads two columns of `<output>/masks/part-*.parquet` (`id` and `confusion`, the flat C*C int64 matrix of
`io/rows.py`'s MASK_SCHEMA), record batch by record batch, and keeps only what the bootstrap and the paired
comparison need: per image its id, its (3, C) stats (`metrics.bootstrap.image_stats`) and where its row is,
plus the summed matrix. Never the encoded masks, never a Python row per image. On S3 each file is opened for
random access (exact ranged GETs of the footer and those two columns), several files at a time. Imports
neither Ray nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.io import fs
from pipeline.io.outputs import MASKS
from pipeline.io.rows import confusion_classes
from pipeline.metrics.bootstrap import ImageStats, image_stats

COLUMNS = ("id", "confusion")
READ_THREADS = 8  # files in flight: S3 latency, not bandwidth, bounds reading many small parts
BATCH_ROWS = 4096  # rows decoded at a time: 4096 x 21 x 21 int64 = 14 MiB


@dataclass(frozen=True)
class RunImages:
    """Per-image stats of one run in id order, and where each image's row lives (to fetch its mask later)."""

    images: ImageStats
    files: tuple[str, ...]  # the parts read, sorted
    file_index: np.ndarray  # (N,) int32: images i's row is in files[file_index[i]] ...
    row_index: np.ndarray  # (N,) int64: ... at this row
    num_unscored: int  # rows without a matrix (run scored without labels); not in `images`

    def location(self, i: int) -> tuple[str, int]:
        """(file, row within it) of image i."""
        return self.files[int(self.file_index[i])], int(self.row_index[i])


@dataclass(frozen=True)
class _FilePart:
    ids: pa.Array
    stats: np.ndarray  # (n, 3, C)
    total: np.ndarray  # (C, C)
    rows: np.ndarray  # (n,) row of each scored image within the file
    num_unscored: int


def part_files(output: str, s3: fs.S3Options | None = None, folder: str = MASKS) -> list[str]:
    """`<output>/<folder>/part-*.parquet`, sorted (listed a page at a time)."""
    storage = fs.storage_for(output, s3)
    return sorted(uri for page in storage.iter_files(fs.join(output, folder)) for uri in page
                  if fs.basename(uri).startswith("part-") and uri.endswith(".parquet"))


def _num_classes(length: int, uri: str) -> int:
    c = math.isqrt(length)
    if c < 1 or c * c != length:
        raise InputError(f"{uri}: a `confusion` list holds {length} values, not C*C for any class count C. "
                         "The file is not a mask part this pipeline wrote: remove it or re-run the scoring.")
    return c


def _read_file(uri: str, s3: fs.S3Options | None, num_classes: int | None, batch_rows: int) -> _FilePart:
    ids, stats, rows = [], [], []
    total = None
    unscored = offset = 0
    c = num_classes
    try:
        with fs.storage_for(uri, s3).open(uri, random_access=True) as handle:
            parquet = pq.ParquetFile(handle)
            missing = [name for name in COLUMNS if name not in parquet.schema_arrow.names]
            if missing:
                raise InputError(f"{uri} has no column {missing[0]!r}: it is not a mask part of a scored run "
                                 "(runs made before per-image matrices were written must be re-scored).")
            c = c or confusion_classes(parquet.schema_arrow)
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
                lists = batch.column("confusion")
                scored = pc.is_valid(lists)
                positions = np.flatnonzero(scored.to_numpy(zero_copy_only=False))
                unscored += batch.num_rows - positions.size
                if positions.size < batch.num_rows:
                    batch = batch.filter(scored)
                    lists = batch.column("confusion")
                if batch.num_rows:
                    lengths = pc.list_value_length(lists).to_numpy()
                    c = c or _num_classes(int(lengths[0]), uri)
                    if np.any(lengths != c * c):
                        wrong = int(lengths[lengths != c * c][0])
                        raise InputError(f"{uri}: expected every `confusion` list to hold {c}x{c} values, "
                                         f"found one of {wrong}. Parts of runs with different class counts "
                                         "cannot be mixed: re-run the scoring into an empty output.")
                    matrices = lists.flatten().to_numpy().reshape(-1, c, c)
                    stats.append(image_stats(matrices))
                    total = matrices.sum(0) if total is None else total + matrices.sum(0)
                    ids.append(batch.column("id"))
                    rows.append(positions + offset)
                offset += len(scored)
    except FileNotFoundError as err:
        raise InputError(f"{uri} disappeared while it was read: is another run writing into this "
                         "output?") from err
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{uri} cannot be read as Parquet ({err}): the part is damaged; re-run the scoring "
                         "with --resume to rewrite it.") from err
    c = c or 0
    return _FilePart(
        ids=pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        stats=np.concatenate(stats) if stats else np.zeros((0, 3, c), np.int64),
        total=total if total is not None else np.zeros((c, c), np.int64),
        rows=np.concatenate(rows) if rows else np.zeros(0, np.int64),
        num_unscored=unscored,
    )


def read_image_files(files: Sequence[str], s3: fs.S3Options | None = None, num_classes: int | None = None,
                     expected_total: np.ndarray | None = None, threads: int = READ_THREADS,
                     batch_rows: int = BATCH_ROWS) -> RunImages:
    """Per-image stats from the given Parquet parts (columns `id` and `confusion`), sorted by id.

    Args:
        files: the parts to read.
        s3: where the S3 API lives, for s3:// files.
        num_classes: C if known (else taken from the first matrix); every matrix must be C x C.
        expected_total: the run's summed matrix (metrics.json `confusion_matrix`); the per-image matrices must
            add up to it, so that intervals never describe other images than the run's scores.
        threads: files read at once.
        batch_rows: rows decoded at a time.

    Raises:
        InputError: no part holds a scored image, a part is damaged, parts disagree on the class count, or the
            matrices do not add up to `expected_total`.
    """
    files = tuple(files)
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        parts = list(pool.map(lambda uri: _read_file(uri, s3, num_classes, batch_rows), files))
    classes = {p.total.shape[0] for p in parts if len(p.ids)}
    if not classes:
        raise InputError(f"No scored image in {len(files)} mask part(s): the run was made without labels (or "
                         "wrote no Parquet). Score a run with labels and --format parquet to get per-image "
                         "matrices.")
    if len(classes) > 1:
        raise InputError(f"The mask parts hold matrices of {sorted(classes)} classes: they come from "
                         "different runs. Re-run the scoring into an empty output.")
    ids = pa.chunked_array([p.ids for p in parts], pa.string())
    order = pc.sort_indices(ids).to_numpy()  # stable: equal ids keep file order, then row order
    file_index = np.concatenate([np.full(len(p.ids), k, np.int32) for k, p in enumerate(parts)])[order]
    row_index = np.concatenate([p.rows for p in parts])[order]
    total = np.sum([p.total for p in parts if len(p.ids)], axis=0)
    if expected_total is not None and not np.array_equal(total, expected_total):
        raise InputError(f"The per-image matrices of {len(files)} mask part(s) do not add up to the run's "
                         "summed matrix: parts are missing (a storage failure) or left from another "
                         "attempt. Run the same command with --resume to complete the run, then read it "
                         "again.")
    images = ImageStats(ids.take(pa.array(order)).to_numpy(zero_copy_only=False).astype(object),
                        np.concatenate([p.stats for p in parts if len(p.ids)])[order], total)
    return RunImages(images, files, file_index, row_index, sum(p.num_unscored for p in parts))


def read_run_images(output: str, s3: fs.S3Options | None = None, folder: str = MASKS,
                    num_classes: int | None = None, expected_total: np.ndarray | None = None,
                    threads: int = READ_THREADS) -> RunImages:
    """Per-image stats of the run in `output` (local path or s3:// URI), from `<output>/<folder>/part-*`.

    Arguments after `folder` as in `read_image_files`.

    Raises:
        InputError: the run has no mask parts, or they hold no scored image.
    """
    files = part_files(output, s3, folder)
    if not files:
        raise InputError(f"{fs.join(output, folder)} holds no part-*.parquet: per-image matrices are written "
                         "by a run with --format parquet (check the path, or re-run the scoring with that "
                         "format).")
    return read_image_files(files, s3, num_classes, expected_total, threads)
