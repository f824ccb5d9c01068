"""A real Ray head for job tests: `ray start --head --block` on 127.0.0.1 with the dashboard and job server.

Separate from the pytest session's Ray (`ray_session`): every port is a free one picked here, and the head
keeps its files under its own short temporary folder (RAY_TMPDIR), so neither cluster can find or disturb the
other. `stop()` ends the `ray start --block` process, which takes down everything it started; the process
group is killed after that as a backstop. `ray stop` is never used: it stops every Ray of this user, the
session's and other people's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class RayHead:
    """One head node; `dashboard_url` is what `ray job submit --address` and JobSubmissionClient take."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rh",
                                         dir="/tmp")  # short: Ray's socket paths have a length limit
        self.port = free_port()
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**os.environ, "RAY_TMPDIR": self.temp_dir, "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH",
                                                                                                   "")}
        self.env.pop("RAY_ADDRESS", None)
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        ports = {
            "--port": self.port, "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
            "--node-manager-port": free_port(), "--object-manager-port": free_port(),
        }
        self.command = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--node-ip-address",
                        "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                        "--num-cpus", str(num_cpus), "--disable-usage-stats"]
        for flag, port in ports.items():
            self.command += [flag, str(port)]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> RayHead:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head's job server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (Path(self.log_path).read_text(errors="replace")[-4000:] if os.path.exists(self.log_path)
                else "")

    def stop(self) -> None:
        """End the head and everything it started, even if it is stuck: SIGTERM to its process group (the
        raylet, GCS, dashboard and workers shut down at once), then SIGKILL to the rest after a short wait."""
        if self.process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.time() + 5
                while time.time() < deadline and _group_alive(self.process.pid):
                    self.process.poll()  # reap the `ray start` process itself
                    time.sleep(0.2)
            self.process.poll()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def run_cli(self, *args: str, timeout: float = 300,
                cwd: str | None = None) -> subprocess.CompletedProcess:
        """`ray <args>` against this head (`ray job submit ...`), output captured."""
        env = {**self.env, "RAY_ADDRESS": self.dashboard_url}
        return subprocess.run([os.path.join(VENV_BIN, "ray"), *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
