"""A run whose driver is killed mid-way, then `--resume`d: the same metrics and masks as an uninterrupted run,
no mask missing or written twice, and the parts committed before the kill are kept, not redone.

The interrupted run is a real `unet-pipeline score` process connected to the test session's Ray cluster,
killed with SIGKILL (no clean-up of any kind) once some parts are committed and before the run finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults.support import (
    GOOD_COUNT,
    ROOT,
    SHARD_SIZE,
    assert_same_results,
    base_config,
    clean_reference,
    read_outputs,
)

from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord
from pipeline.io.manifest import ShardRef
from pipeline.metrics import ConfusionAccumulator
from pipeline.results import RunFailed
from pipeline.resume import check_every_input_accounted, done_rows, remove_orphan_files
from pipeline.run import run

SLOW_BACKEND = {"backend": "tests.faults.crashing_backend:FaultyBackend",
                "backend_options": {"seconds_per_batch": 0.25}}  # the run lasts long enough to be cut mid-way
SHARDS = GOOD_COUNT // SHARD_SIZE


def _commit_records(output: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (output / "_run" / "parts").glob("*.json")}


def _start_and_kill(command: list[str], output: Path, log: Path) -> dict[str, str]:
    """Run `command`, SIGKILL its process group once a part is committed; returns the commit records then."""
    with open(log, "wb") as sink:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the driver imports tests.faults.crashing_backend too
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 240
        try:
            while not _commit_records(output):
                assert process.poll() is None, f"the run ended before it could be killed:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no part committed in time:\n{log.read_text()}"
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    return _commit_records(output)


@pytest.mark.integration
def test_a_killed_run_resumes_to_the_same_results(tmp_path_factory, tmp_path, ray_session):
    reference = clean_reference(tmp_path_factory)
    output = tmp_path / "out"
    config = base_config(str(reference.data), str(output), reference.checkpoint, **SLOW_BACKEND)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SLOW_BACKEND))
    command = [str(Path(sys.executable).parent / "unet-pipeline"), "score", "--config", str(settings),
               "-m", "milesial", "-c", reference.checkpoint, "-i", str(reference.data), "-o", str(output),
               "-l", "pairs", "--processing", "upstream", "--scale", "1.0", "--format", "both",
               "--shard-size", str(SHARD_SIZE), "--batch-size", "2", "--no-report", "--no-progress",
               "--address", ray_session.get_runtime_context().gcs_address]

    before = _start_and_kill(command, output, tmp_path / "killed-run.log")
    assert 0 < len(before) < SHARDS, "killed mid-way: some parts committed, not all"
    assert not (output / "metrics.json").exists()

    run(config.replace(resume=True))
    outputs = read_outputs(str(output))
    assert_same_results(outputs, reference.outputs)  # every mask once in Parquet and as PNG, none missing
    assert outputs.metrics["num_inputs"] == GOOD_COUNT and outputs.errors == []
    after = _commit_records(output)
    assert len(after) == SHARDS
    assert {name: after[name] for name in before} == before, "parts committed before the kill were not redone"

    files = sorted(outputs.files)
    run(config.replace(resume=True))  # resuming a finished run: nothing to do, same results, same files
    again = read_outputs(str(output))
    assert_same_results(again, reference.outputs)
    assert sorted(again.files) == files

    with pytest.raises(ConfigError, match="threshold"):  # results made with other settings are never mixed in
        run(config.replace(resume=True, threshold=0.3))


def _part(name: str, shard: int, rows: list[int], files: list[str] = ()) -> PartRecord:
    return PartRecord(part=name, shard=shard, rows=tuple(rows), num_ok=len(rows), num_errors=0,
                      scores=ConfusionAccumulator(2), errors=(), files=tuple(files), committed=True)


def test_a_row_committed_twice_stops_a_resume():
    with pytest.raises(PipelineError, match="part-b commits rows of shard 0"):
        done_rows([_part("part-a", 0, [0, 1]), _part("part-b", 0, [1, 2])], "out")
    assert done_rows([_part("part-a", 0, [0, 1]), _part("part-b", 0, [2]), _part("part-c", 1, [0])],
                     "out") == {
        0: {0, 1, 2}, 1: {0}}


def test_inputs_without_a_result_or_an_error_fail_the_run():
    shards = [ShardRef(0, "m0", "items", 2), ShardRef(1, "m1", "items", 2), ShardRef(2, "c.parquet",
                                                                                     "container", None)]
    check_every_input_accounted(shards, [_part("a", 0, [0, 1]), _part("b", 1, [0]), _part("c", 1, [1])])
    with pytest.raises(RunFailed, match=r"missing rows shard 1: 1.*--resume"):
        check_every_input_accounted(shards, [_part("a", 0, [0, 1]), _part("b", 1, [0])])


def test_mask_files_no_part_names_are_removed(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("part-000000-000001.parquet", "part-000001-000001.parquet"):
        (masks / name).write_bytes(b"x")
    remove_orphan_files(str(tmp_path), [_part("p", 0, [0], [str(masks / "part-000000-000001.parquet")])],
                        None)
    assert [p.name for p in masks.iterdir()] == ["part-000000-000001.parquet"]


def test_a_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """Local writes go to a hidden temp file renamed into place: a write cut short leaves the old file."""
    target = tmp_path / "masks" / "part-000000-000001.parquet"
    fs.write_bytes(str(target), b"complete old part")

    def fail(src, dst):
        raise OSError("disk full")  # the process dies between writing and renaming

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fs.write_bytes(str(target), b"new part that never lands")
    assert target.read_bytes() == b"complete old part"
    assert [p.name for p in target.parent.iterdir()] == [target.name], "the temporary file is cleaned up"


@pytest.mark.parametrize("change", [
    {"calibration": "minmax"}, {"calibration_images": 8}, {"vacc_model": "deploy/unet-int8/mod"},
    {"backend_options": {"channels_last": 0}}, {"precision": "fp16"}, {"threshold": 0.3},
])
def test_resume_refuses_settings_that_change_results(tmp_path, change):
    from pipeline.resume import check_resume_settings

    config = base_config("in", str(tmp_path / "out"), "c.pth")
    check_resume_settings(config, "sha", None)  # the first attempt records its settings
    key = next(iter(change))
    with pytest.raises(ConfigError, match=f"other settings \\({key}: "):
        check_resume_settings(config.replace(resume=True, **change), "sha", None)
    with pytest.raises(ConfigError, match="checkpoint_sha256"):
        check_resume_settings(config.replace(resume=True), "another sha", None)


def test_resume_accepts_settings_that_change_nothing_and_keeps_the_run_id(tmp_path):
    from pipeline.history import new_run_id
    from pipeline.resume import check_resume_settings

    config = base_config("in", str(tmp_path / "out"), "c.pth")
    check_resume_settings(config, "sha", None)
    faster = config.replace(resume=True, batch_size=16, concurrency=1, shard_size=4, max_errors=3,
                            bootstrap=50, bootstrap_group="^[^_]+", bootstrap_seed=3, gate="significant")
    check_resume_settings(faster, "sha", None)
    assert new_run_id(faster)[-8:] == new_run_id(config)[-8:]


@pytest.mark.integration
def test_a_resume_with_another_calibration_is_refused_end_to_end(tmp_path_factory, tmp_path, ray_session):
    from click.testing import CliRunner

    from pipeline.cli import cli

    reference = clean_reference(tmp_path_factory)
    args = ["score", "-m", "milesial", "-c", reference.checkpoint, "-i", str(reference.data), "-o",
            str(tmp_path / "out"), "--scale", "1.0", "--limit", "4", "--no-report", "--no-progress"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    refused = CliRunner().invoke(cli, [*args, "--resume", "--calibration", "minmax"])
    assert refused.exit_code != 0 and "calibration: 'entropy' -> 'minmax'" in str(refused.exception)
    accepted = CliRunner().invoke(cli, [*args, "--resume", "--batch-size", "1"], catch_exceptions=False)
    assert accepted.exit_code == 0
