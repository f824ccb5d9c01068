"""Two runs at once: different outputs both finish; the same output is refused to the second run, while a lock
whose holder is gone is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from faults.support import (
    ROOT,
    SHARD_SIZE,
    assert_same_results,
    base_config,
    clean_reference,
    read_outputs,
)

from pipeline.errors import ConfigError
from pipeline.io.lock import STALE_SECONDS, LockHolder, OutputLock
from pipeline.run import run


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_held_output_is_refused_and_released_after(tmp_path, where, request):
    if where == "s3":
        output = f"s3://{request.getfixturevalue('s3_bucket')}/runs/one"
    else:
        output = str(tmp_path / "out")
    with OutputLock(output):
        with pytest.raises(ConfigError, match=rf"--output {output} is being written by another run \(process "
                                              rf"{os.getpid()} on "):
            OutputLock(output).__enter__()
    with OutputLock(output):  # released: the next run gets it
        pass


def _lock_file(output: Path, holder: LockHolder) -> None:
    (output / "_run").mkdir(parents=True, exist_ok=True)
    (output / "_run" / "lock.json").write_text(json.dumps(asdict(holder)))


def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True,
                          check=True)
    dead = replace(LockHolder.me(), pid=int(gone.stdout), token="dead")
    _lock_file(tmp_path, dead)
    with OutputLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / "_run" / "lock.json").read_text())["token"] == lock.holder.token

    far = replace(LockHolder.me(), host="another-host", token="far", heartbeat=time.time())
    _lock_file(tmp_path, far)
    with pytest.raises(ConfigError, match="on another-host"):
        OutputLock(str(tmp_path)).__enter__()
    _lock_file(tmp_path, replace(far, heartbeat=time.time() - STALE_SECONDS - 1))  # silent for too long
    with OutputLock(str(tmp_path)):
        pass


@pytest.mark.integration
def test_a_second_run_into_the_same_output_is_refused(tmp_path_factory, tmp_path, ray_session):
    reference = clean_reference(tmp_path_factory)
    output = tmp_path / "out"
    settings = tmp_path / "slow.json"
    settings.write_text(json.dumps({"backend": "tests.faults.crashing_backend:FaultyBackend",
                                    "backend_options": {"seconds_per_batch": 2.0}}))
    command = [str(Path(sys.executable).parent / "unet-pipeline"), "score", "--config", str(settings), "-m",
               "milesial", "-c", reference.checkpoint, "-i", str(reference.data), "-o", str(output),
               "--scale",
               "1.0", "--shard-size", str(SHARD_SIZE), "--no-report", "--no-progress", "--address",
               ray_session.get_runtime_context().gcs_address]
    first = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (output / "_run" / "lock.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        with pytest.raises(ConfigError,
                           match=f"process {first.pid} on .* two runs must not write one output"):
            run(base_config(str(reference.data), str(output), reference.checkpoint))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    # the first run is gone (killed): its lock is stale, so resuming its output works
    run(base_config(str(reference.data), str(output), reference.checkpoint, resume=True))
    assert_same_results(read_outputs(str(output)), reference.outputs)


@pytest.mark.integration
@pytest.mark.slow  # two CLIs, each starting a Ray of its own: ~30 s on 2 cores
def test_two_runs_into_different_outputs_both_finish(tmp_path_factory, tmp_path, ray_session):
    reference = clean_reference(tmp_path_factory)
    commands = [[str(Path(sys.executable).parent / "unet-pipeline"), "score", "-m", "milesial", "-c",
                 reference.checkpoint, "-i", str(reference.data), "-o", str(tmp_path / name), "--scale",
                 "1.0",
                 "--format", "both", "--shard-size", str(SHARD_SIZE), "--batch-size", "2", "--no-report",
                 "--no-progress"] for name in ("a", "b")]  # each starts a Ray of its own, as two users would
    runs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    for process in runs:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, out.decode()[-3000:]
    for name in ("a", "b"):
        assert_same_results(read_outputs(str(tmp_path / name)), reference.outputs)
