"""Progress lines for job logs: how many shards, images and errors a run has committed so far.

Progress bars need a terminal; a Ray job's log is a file. This reads the run's commit records
(`_run/parts/*.json`, one per committed part) every few seconds and prints one line, so the log shows steady
progress on any cluster and with any storage. Each record is read once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from pipeline.io import fs
from pipeline.io.commits import PartRecord, read_records, record_uris
from pipeline.io.manifest import ShardRef

INTERVAL_ENV = "UNET_PIPELINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_SECONDS = 10.0


def _print_now(line: str) -> None:
    print(line, flush=True)


class CommitProgress:
    """Context manager: a line at the start, one every `interval` seconds, and a last one at the end."""

    def __init__(self, output: str, shards: list[ShardRef], s3: fs.S3Options | None = None,
                 interval: float | None = None, echo: Callable[[str], None] = _print_now) -> None:
        self.output = output
        self.num_shards = len(shards)
        sizes = [ref.size for ref in shards]
        self.num_inputs = None if None in sizes else sum(sizes)  # containers: unknown until read
        self.s3 = s3
        self.interval = interval if interval is not None else float(
            os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS))
        self.echo = echo
        self._records: dict[str, PartRecord] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="commit-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> CommitProgress:
        self._started = time.monotonic()
        self.echo(self.line())
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.echo(self.line())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.echo(self.line())
            except Exception as err:  # a storage hiccup must not end the run; the next tick tries again
                self.echo(f"progress: cannot read commit records yet ({type(err).__name__}: {err})")

    def _read_new_records(self) -> None:
        new = [uri for uri in record_uris(self.output, self.s3) if uri not in self._records]
        self._records.update(zip(new, read_records(new, self.s3), strict=True))

    def line(self) -> str:
        """`progress: 3/12 shards, 96/384 inputs committed (95 images, 1 errors), 14 s, 6.9 inputs/s`."""
        self._read_new_records()
        records = list(self._records.values())
        shards = len({r.shard for r in records})
        ok = sum(r.num_ok for r in records)
        errors = sum(r.num_errors for r in records)
        done = ok + errors
        elapsed = time.monotonic() - self._started
        of_inputs = f"/{self.num_inputs}" if self.num_inputs is not None else ""
        rate = f", {done / elapsed:.1f} inputs/s" if elapsed > 0 and done else ""
        return (f"progress: {shards}/{self.num_shards} shards, {done}{of_inputs} inputs committed "
                f"({ok} images, {errors} errors), {elapsed:.0f} s{rate}")
