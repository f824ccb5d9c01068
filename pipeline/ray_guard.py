"""A local Ray started by the CLI dies with the driver, however the driver ends.

Ray's own daemons die with the driver (they are started with PR_SET_PDEATHSIG), but two agents
(`DashboardAgent`, `RuntimeEnvAgent`) live on for about a minute after a SIGKILL, and worker processes a few
seconds. So, before a local `ray.init`:

* `install()` tags this process's environment with an owner marker (`UNET_PIPELINE_RAY_OWNER=<pid>:<start
  time>`), which every process the local Ray starts inherits, and starts a watchdog: this module run as a
  separate process in its own session (so Ctrl-C and group signals do not reach it), blocked reading a pipe
  whose only write end the driver holds. When the driver ends in any way (exit, exception, SIGTERM, SIGINT,
  SIGKILL, an OOM kill) the kernel closes the pipe; the watchdog reads EOF and kills every process carrying
  the marker, and every child of one that it noted while the driver ran (every `WATCH_SECONDS`): Ray's agents
  set their process title over their environment, so the marker is not always readable there, and once the
  raylet is gone their parent is init.
* `reap_stale()` kills marked processes whose owner is gone (the watchdog itself was killed too), at the next
  start.

Linux only (it reads /proc); elsewhere both do nothing. Only this user's processes are visible.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

from pipeline.processes import live_processes, process_start_time

OWNER_ENV = "UNET_PIPELINE_RAY_OWNER"
GRACE_SECONDS = 3.0
SWEEP_SECONDS = 20.0  # how long the watchdog keeps sweeping after the driver ended
QUIET_SECONDS = 2.0  # ... unless no marked process was seen for this long
WATCH_SECONDS = 1.0  # while the driver runs, the watchdog notes the marked processes' children this often
_state: dict[str, int] = {}


def owner_of(pid: int) -> str:
    """The marker value naming process `pid` as an owner."""
    return f"{pid}:{process_start_time(pid)}"


def _owner_alive(owner: str) -> bool:
    pid, _, start = owner.partition(":")
    return pid.isdigit() and process_start_time(int(pid)) == start


def marked_processes(owner: str | None = None) -> dict[int, str]:
    """pid -> owner marker of every live process (of this user) whose environment carries one (of `owner`)."""
    key = (OWNER_ENV + "=").encode()
    found = {}
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        start = env.find(key)
        if start < 0 or (start > 0 and env[start - 1:start] != b"\0"):
            continue
        value = env[start + len(key):].split(b"\0", 1)[0].decode(errors="replace")
        if (owner is None or value == owner) and process_start_time(int(name)) is not None:
            found[int(name)] = value
    return found


def with_descendants(pids: Iterable[int]) -> dict[int, str]:
    """pid -> start time of `pids` and of all their descendants alive now."""
    table = live_processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, str] = {}
    todo = [pid for pid in pids if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return found


def kill_all(pids: list[int], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if process_start_time(pid) is not None]
            if not pids:
                return
            time.sleep(0.1)


def reap_stale() -> int:
    """Kill the processes of earlier local Rays whose driver is gone; returns how many."""
    stale = [pid for pid, owner in marked_processes().items() if not _owner_alive(owner)]
    if stale:
        kill_all(stale, grace=0.0)  # they are orphans: shutting down politely is not their concern any more
    return len(stale)


def install() -> None:
    """Mark this process's future Ray processes and start the watchdog (once per process; Linux only)."""
    if "write_end" in _state or not os.path.isdir("/proc"):
        return
    reap_stale()
    owner = owner_of(os.getpid())
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the watchdog must not kill itself
    subprocess.Popen([sys.executable, "-m", "pipeline.ray_guard", owner, str(read_end)], pass_fds=(read_end,),
                     env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    os.close(read_end)
    os.set_inheritable(write_end, False)  # Ray's processes must not hold the pipe open
    _state["write_end"] = write_end  # open for the life of this process
    os.environ[OWNER_ENV] = owner


def _watch(owner: str, fd: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end ends the watch
    family: dict[int, str] = {}  # pid -> start time of the marked processes and their children seen so far
    while True:
        if select.select([fd], [], [], WATCH_SECONDS)[0]:
            if not os.read(fd, 4096):
                break
        else:
            family.update(with_descendants(marked_processes(owner)))
    # Sweep until none has been seen for a while: a process Ray was starting when the driver died (an agent
    # the raylet spawned a moment before) would escape a single scan.
    deadline, quiet_since, grace = time.monotonic() + SWEEP_SECONDS, None, GRACE_SECONDS
    while time.monotonic() < deadline:
        noted = [pid for pid, start in family.items() if process_start_time(pid) == start]
        pids = sorted(set(marked_processes(owner)) | set(noted))
        if pids:
            kill_all(pids, grace)
            quiet_since, grace = None, 0.5  # late ones are orphans: no need to wait for a clean stop
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > QUIET_SECONDS:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
