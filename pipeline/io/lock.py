"""One writer per output folder: `_run/lock.json` names the run that holds it, and a second run is refused.

The lock records the holder's host, process id and process start time, and a heartbeat the holder refreshes
every `HEARTBEAT_SECONDS`. A lock is stale, and taken over, when its holder is known to be gone: on the same
host, no process with that id and start time is alive; elsewhere, its heartbeat is older than `STALE_SECONDS`.
After writing its lock a run reads it back: of two runs racing for a stale lock, only the one whose record is
there goes on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.outputs import lock_uri
from pipeline.processes import process_start_time

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 4 * HEARTBEAT_SECONDS
SETTLE_SECONDS = 0.2  # between writing the lock and reading it back


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output: enough to tell whether it is still alive, and to say who it is."""

    host: str
    pid: int
    start_time: str | None
    started_at: str
    token: str
    heartbeat: float

    @classmethod
    def me(cls) -> LockHolder:
        return cls(socket.gethostname(), os.getpid(), process_start_time(os.getpid()),
                   datetime.now(UTC).isoformat(timespec="seconds"), uuid.uuid4().hex, time.time())

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            return self.start_time is not None and process_start_time(self.pid) == self.start_time
        return time.time() - self.heartbeat < STALE_SECONDS

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}, started {self.started_at}"


class OutputLock:
    """Context manager: hold `<output>/_run/lock.json` for the life of the block, or refuse to start."""

    def __init__(self, output: str, s3: fs.S3Options | None = None) -> None:
        self.uri = lock_uri(output)
        self.output = output
        self.s3 = s3
        self.holder = LockHolder.me()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="output-lock", daemon=True)

    def __enter__(self) -> OutputLock:
        current = self._read()
        if current is not None and current.token != self.holder.token and current.alive():
            raise ConfigError(self._refusal(current))
        self._write(self.holder)
        time.sleep(SETTLE_SECONDS)
        current = self._read()
        if current is None or current.token != self.holder.token:
            raise ConfigError(self._refusal(current) if current else
                              f"Another run took the lock of {self.output} at the same moment: run again.")
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()
        current = self._read()
        if current is not None and current.token == self.holder.token:
            fs.storage_for(self.uri, self.s3).delete(self.uri)

    def _refusal(self, holder: LockHolder) -> str:
        return (f"--output {self.output} is being written by another run ({holder.describe()}): two runs "
                "must not write one output. Wait for it to finish, or pick another --output. If that run is "
                f"gone and this message persists, delete {self.uri}.")

    def _read(self) -> LockHolder | None:
        storage = fs.storage_for(self.uri, self.s3)
        try:
            data = json.loads(storage.read_bytes(self.uri))
            return LockHolder(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None
        except OSError:
            if not storage.exists(self.uri):
                return None
            raise

    def _write(self, holder: LockHolder) -> None:
        fs.storage_for(self.uri, self.s3).write_bytes(self.uri, json.dumps(asdict(holder)).encode("utf-8"))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write(LockHolder(**{**asdict(self.holder), "heartbeat": time.time()}))
            except Exception:  # a missed beat only matters to other hosts, after STALE_SECONDS
                continue
