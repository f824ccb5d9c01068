"""The progress lines a job prints, computed from commit records (no Ray needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.io.commits import PartRecord, write_record
from pipeline.io.manifest import ShardRef
from pipeline.io.outputs import part_name
from pipeline.io.rows import ErrorRecord
from pipeline.metrics import ConfusionAccumulator

ROOT = Path(__file__).resolve().parents[2]


def _load_progress_module():
    """jobs/progress.py by path: `jobs` on sys.path may be this test folder (tests/jobs), not ROOT/jobs."""
    spec = importlib.util.spec_from_file_location("job_progress", ROOT / "jobs" / "progress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit(output: Path, shard: int, first_row: int, num_ok: int, num_errors: int) -> None:
    """Commit a part the way the sink does."""
    rows = tuple(range(first_row, first_row + num_ok + num_errors))
    errors = tuple(ErrorRecord(shard, row, f"id{row}", "src", "", "decode", "InputError", "bad")
                   for row in rows[num_ok:])
    write_record(str(output), PartRecord(part_name(shard, first_row), shard, rows, num_ok, num_errors,
                                         ConfusionAccumulator(2), errors, (), True), None)


def test_lines_count_committed_shards_inputs_and_errors(tmp_path):
    progress = _load_progress_module()
    shards = [ShardRef(i, f"m{i}", "items", 4) for i in range(3)]
    lines: list[str] = []
    with progress.CommitProgress(str(tmp_path), shards, interval=3600, echo=lines.append) as watch:
        _commit(tmp_path, 0, 0, 3, 1)
        _commit(tmp_path, 1, 0, 2, 0)  # shard 1 arrives in two parts
        _commit(tmp_path, 1, 2, 2, 0)
        middle = watch.line()
    assert lines[0].startswith("progress: 0/3 shards, 0/12 inputs committed (0 images, 0 errors)")
    assert middle.startswith("progress: 2/3 shards, 8/12 inputs committed (7 images, 1 errors)")
    assert lines[-1].startswith("progress: 2/3 shards, 8/12 inputs committed (7 images, 1 errors)")


def test_container_shards_have_no_known_total(tmp_path):
    progress = _load_progress_module()
    _commit(tmp_path, 0, -1, 5, 0)
    line = progress.CommitProgress(str(tmp_path), [ShardRef(0, "a.parquet", "container", None)],
                                   echo=lambda _: None).line()
    assert line.startswith("progress: 1/1 shards, 5 inputs committed (5 images, 0 errors)")
