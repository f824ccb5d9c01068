"""Progress as a run reports it: lines for job logs and piped output, the same numbers as a terminal bar."""

from __future__ import annotations

import io

from pipeline.io.commits import PartRecord
from pipeline.io.rows import ErrorRecord
from pipeline.metrics import ConfusionAccumulator
from pipeline.progress import BarProgress, LineProgress, Progress, progress_for


def _part(shard: int, first_row: int, num_ok: int, num_errors: int) -> PartRecord:
    rows = tuple(range(first_row, first_row + num_ok + num_errors))
    errors = tuple(ErrorRecord(shard, row, f"id{row}", "src", "", "decode", "InputError", "bad")
                   for row in rows[num_ok:])
    return PartRecord(f"part-{shard}", shard, rows, num_ok, num_errors, ConfusionAccumulator(2), errors, (),
                      True)


def test_lines_count_listed_and_committed_inputs():
    lines: list[str] = []
    progress = LineProgress(interval=3600, echo=lines.append)
    progress.start()
    progress.listed(8, done=False)
    progress.committed([_part(0, 0, 3, 1)])
    middle = progress.snapshot().line()
    progress.listed(12, done=True)
    progress.committed([_part(1, 0, 2, 0), _part(1, 2, 2, 0)])
    progress.close()
    assert lines[0].startswith("progress: 0 of 0+ listed inputs committed (0 images, 0 errors)")
    assert middle.startswith("progress: 4 of 8+ listed inputs committed (3 images, 1 errors)")
    assert lines[-1].startswith("progress: 8/12 inputs committed (7 images, 1 errors)") and "ETA" in lines[-1]


def test_a_bar_shows_the_same_numbers_on_a_terminal():
    stream = io.StringIO()
    progress = BarProgress(stream)
    progress.start()
    progress.listed(4, done=True)
    progress.committed([_part(0, 0, 3, 1)])
    progress.close()
    text = stream.getvalue()
    assert "4/4" in text and "1 errors" in text


def test_no_progress_shows_nothing_and_piped_output_gets_lines(monkeypatch):
    assert type(progress_for(False)) is Progress
    monkeypatch.setenv("CI", "1")
    assert isinstance(progress_for(None), LineProgress)
