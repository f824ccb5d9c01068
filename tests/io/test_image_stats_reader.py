"""Reading a run's per-image matrices from its Parquet mask parts, locally and from S3."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.io.image_stats import read_image_files, read_run_images
from pipeline.io.rows import MASK_SCHEMA
from pipeline.metrics.bootstrap import ImageStats

C = 4


def write_run(output, parts: dict[str, list[tuple[str, np.ndarray | None]]], mask_bytes: int = 16) -> None:
    """Mask parts in the sink's schema; a None matrix is a row of a run scored without labels."""
    rng = np.random.default_rng(0)
    (output / "masks").mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        table = pa.Table.from_pylist([
            {"id": item_id, "source": f"/data/{item_id}.png", "height": 2, "width": 2,
             "mask_png": rng.bytes(mask_bytes), "pixel_accuracy": None, "iou": None, "dice": None,
             "confusion": None if m is None else m.ravel().tolist(), "model": "m", "shard": 0, "row": r}
            for r, (item_id, m) in enumerate(rows)], schema=MASK_SCHEMA)
        pq.write_table(table, output / "masks" / f"{name}.parquet", compression="zstd")


def example_run(output):
    rng = np.random.default_rng(1)
    matrices = {f"id{i:02d}": rng.integers(0, 50, (C, C)) for i in range(11)}
    parts = {
        "part-000000-000001": [("id07", matrices["id07"]), ("id02", matrices["id02"]), ("nolabel", None),
                               ("id09", matrices["id09"]), ("id00", matrices["id00"])],
        "part-000001-000001": [(k, matrices[k]) for k in ("id05", "id10", "id01")],
        "part-000002-000001": [("unscored", None)],
        "part-000003-000001": [(k, matrices[k]) for k in ("id03", "id08", "id06", "id04")],
    }
    write_run(output, parts)
    (output / "masks" / "stray.txt").write_text("not a part")
    return matrices, parts


def check(run, matrices, parts):
    expected = ImageStats.from_matrices(list(matrices), np.array(list(matrices.values())))
    assert run.images.ids.tolist() == sorted(matrices)
    np.testing.assert_array_equal(run.images.stats, expected.stats)
    np.testing.assert_array_equal(run.images.total, expected.total)
    assert run.num_unscored == 2
    for i, item_id in enumerate(run.images.ids):  # each location points at that image's own row
        uri, row = run.location(i)
        assert parts[uri.rsplit("/", 1)[-1].removesuffix(".parquet")][row][0] == item_id


@pytest.mark.parametrize("batch_rows", [1, 2, 4096])
def test_reads_ids_and_stats_from_local_parts_page_by_page(tmp_path, batch_rows):
    matrices, parts = example_run(tmp_path)
    files = sorted(str(p) for p in (tmp_path / "masks").glob("part-*.parquet"))
    check(read_image_files(files, batch_rows=batch_rows, threads=2), matrices, parts)
    total = np.sum(list(matrices.values()), axis=0)
    check(read_run_images(str(tmp_path), num_classes=C, expected_total=total), matrices, parts)
    with pytest.raises(InputError, match="do not add up to the run's summed matrix"):
        read_run_images(str(tmp_path), expected_total=total + 1)


@pytest.mark.integration
def test_reads_from_s3_fetching_only_the_two_columns(tmp_path, s3_server, s3_bucket, monkeypatch):
    import s3fs.core
    from conftest import upload_tree

    matrices, parts = example_run(tmp_path / "run")
    extra = {f"big{i:02d}": np.full((C, C), i) for i in range(20)}
    big = {"part-000009-000001": list(extra.items())}
    write_run(tmp_path / "run", big, mask_bytes=200_000)  # incompressible masks the reader must not fetch
    uri = upload_tree(tmp_path / "run", s3_bucket, "run", s3_server)
    fetched: list[int] = []
    real = s3fs.core.S3File._fetch_range

    def counting(self, start, end):
        fetched.append(end - start)
        return real(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)
    run = read_run_images(uri)
    check(run, matrices | extra, parts | big)
    size = (tmp_path / "run" / "masks" / "part-000009-000001.parquet").stat().st_size
    assert sum(fetched) < 0.05 * size, f"{sum(fetched)} bytes fetched for parts of {size} bytes of masks"


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(InputError, match="holds no part-"):
        read_run_images(str(tmp_path))
    write_run(tmp_path / "a", {"part-0": [("x", None)]})
    with pytest.raises(InputError, match="No scored image"):
        read_run_images(str(tmp_path / "a"))
    write_run(tmp_path / "b", {"part-0": [("x", np.ones((C, C), np.int64))],
                               "part-1": [("y", np.ones((C, C), np.int64)), ("z", np.ones(7, np.int64))]})
    with pytest.raises(InputError, match=r"part-1.parquet: expected every `confusion` list to hold 4x4"):
        read_run_images(str(tmp_path / "b"))
    write_run(tmp_path / "c", {"part-0": [("x", np.ones(5, np.int64))]})
    with pytest.raises(InputError, match="not C\\*C"):
        read_run_images(str(tmp_path / "c"))
    (tmp_path / "d" / "masks").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "d" / "masks" / "part-0.parquet")
    with pytest.raises(InputError, match="no column 'confusion'"):
        read_run_images(str(tmp_path / "d"))
    (tmp_path / "d" / "masks" / "part-0.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="damaged"):
        read_run_images(str(tmp_path / "d"))


def test_reading_and_resampling_import_neither_ray_nor_torch():
    code = ("import sys, pipeline.io.image_stats, pipeline.metrics.bootstrap, pipeline.metrics.compare; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
