"""No leftovers: a local Ray started by the CLI ends with all its processes however the driver ends.

Each case runs `unet-pipeline score` in a subprocess that starts its own local Ray, ends it one way, and then
looks for any process still carrying a probe variable the test put in the run's environment: every process of
that Ray inherits it, workers and agents included. Without `pipeline.ray_guard`, a SIGKILL leaves two Ray
agents alive for a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import factories
import pytest
from faults.support import ROOT, make_checkpoint

from pipeline.processes import live_processes, process_start_time
from pipeline.ray_guard import with_descendants

pytestmark = pytest.mark.integration
SETTLE_SECONDS = 8.0  # the watchdog gives Ray's processes 3 s to stop, then kills them


def _command(tmp_path: Path, output: str, slow: bool) -> list[str]:
    data = factories.write_pairs(tmp_path / "data", factories.samples(8, first=900))
    checkpoint = make_checkpoint(tmp_path / "m.pth")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"backend": "tests.faults.crashing_backend:FaultyBackend",
                                    "backend_options": {"seconds_per_batch": 3.0 if slow else 0.0}}))
    return [str(Path(sys.executable).parent / "unet-pipeline"), "score", "--config", str(settings), "-m",
            "milesial", "-c", checkpoint, "-i", str(data), "-o", output, "--scale", "1.0", "--shard-size",
            "2",
            "--no-report", "--no-progress"]


PROBE = "UNET_PIPELINE_LEFTOVER_PROBE"


def _carrying(probe: str) -> list[int]:
    """Live processes whose environment holds PROBE=probe (the driver, its Ray and everything Ray started)."""
    wanted = f"{PROBE}={probe}".encode()
    found = []
    for pid in live_processes():
        try:
            if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def _family(probe: str) -> dict[int, str]:
    """pid -> start time of the processes carrying the probe and of all their descendants (a process that
    writes its title over its environment, as Ray's agents do, may no longer show the probe there)."""
    return with_descendants(_carrying(probe))


def _left(probe: str, seen: dict[int, str]) -> list[int]:
    """The processes of the run still alive: carrying the probe now, or seen during the run (same start)."""
    alive = {pid for pid, start in seen.items() if process_start_time(pid) == start}
    return sorted(set(_carrying(probe)) | alive)


def _end_run(tmp_path: Path, how: str, probe: str) -> tuple[int | None, dict[int, str]]:
    """(the driver's exit status, the processes that carried the probe while it ran, with their children)."""
    output = tmp_path / "out"
    command = _command(tmp_path, str(output), slow=how not in ("exit", "exception"))
    if how == "exception":  # a run that fails after Ray started: more bad inputs than --max-errors allows
        (tmp_path / "data" / "images" / "broken.png").write_bytes(b"not an image")
        (tmp_path / "data" / "masks" / "broken.png").write_bytes(b"not an image")
        command += ["--max-errors", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", PROBE: probe}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    owned: dict[int, str] = {}
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        owned.update(_family(probe))
        if how not in ("exit", "exception") and (output / "_run" / "parts").is_dir() and \
                any((output / "_run" / "parts").iterdir()):
            process.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT,
                                 "sigkill": signal.SIGKILL}[how])
            break
        time.sleep(0.1)
    status = process.wait(120)
    return status, owned


def _check(tmp_path: Path, how: str) -> None:
    probe = uuid.uuid4().hex
    status, owned = _end_run(tmp_path, how, probe)
    assert len(owned) > 3, f"the run never started its own Ray ({len(owned)} processes seen)"
    deadline = time.monotonic() + SETTLE_SECONDS
    while _left(probe, owned) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: _name(p) for p in _left(probe, owned)}
    assert not left, f"after {how} (exit {status}), processes of its Ray are still alive: {left}"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


@pytest.mark.slow  # ~25 s. It failed now and then until the watchdog also killed the children it had noted:
# Ray's two agents write their process title over their environment, which sometimes erased the marker there
def test_a_killed_driver_leaves_no_ray_process(tmp_path):
    _check(tmp_path, "sigkill")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "exception", "sigterm", "sigint"])
def test_every_way_of_ending_leaves_no_ray_process(tmp_path, how):
    _check(tmp_path, how)
