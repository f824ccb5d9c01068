"""Live progress of a run: inputs listed and committed, images/s, ETA.

The driver learns of every committed part the moment its actor returns the record (`pipeline.pool`), and of
the listing as it goes, so progress needs no polling of storage. Two ways to show it, one source of numbers:

* `BarProgress`: a tqdm bar on an interactive terminal;
* `LineProgress`: a plain line every `interval` seconds (job logs, CI, piped output), and one at the end.

`progress_for(enabled)` picks: a bar on a terminal, lines otherwise, nothing with `--no-progress`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from pipeline.io.commits import PartRecord

INTERVAL_ENV = "UNET_PIPELINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class Snapshot:
    """Progress at one moment."""

    listed: int  # inputs listed so far (file layouts; containers count as they are read)
    listing_done: bool
    images: int
    errors: int
    elapsed: float  # seconds since the pipeline started

    @property
    def committed(self) -> int:
        return self.images + self.errors

    @property
    def rate(self) -> float | None:
        return self.committed / self.elapsed if self.elapsed > 0 and self.committed else None

    @property
    def eta(self) -> float | None:
        if not self.listing_done or self.rate is None:
            return None
        return max(self.listed - self.committed, 0) / self.rate

    def line(self) -> str:
        """`progress: 96/384 inputs committed (95 images, 1 errors), 14 s, 6.9 inputs/s, ETA 42 s`."""
        total = f"/{self.listed}" if self.listing_done else f" of {self.listed}+ listed"
        rate = f", {self.rate:.1f} inputs/s" if self.rate else ""
        eta = f", ETA {self.eta:.0f} s" if self.eta is not None and self.committed < self.listed else ""
        return (f"progress: {self.committed}{total} inputs committed ({self.images} images, {self.errors} "
                f"errors), {self.elapsed:.0f} s{rate}{eta}")


class Progress:
    """What the run tells: listing and commits. Subclasses show it; this one shows nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._listed = 0
        self._listing_done = False
        self._images = 0
        self._errors = 0

    def start(self) -> None:
        self._started = time.monotonic()

    def listed(self, inputs: int, done: bool) -> None:
        with self._lock:
            self._listed, self._listing_done = inputs, done
        self.show(self.snapshot())

    def committed(self, parts: Iterable[PartRecord]) -> None:
        with self._lock:
            for part in parts:
                self._images += part.num_ok
                self._errors += part.num_errors
        self.show(self.snapshot())

    def snapshot(self) -> Snapshot:
        with self._lock:
            listed = max(self._listed, self._images + self._errors)
            return Snapshot(listed, self._listing_done, self._images, self._errors,
                            time.monotonic() - self._started)

    def show(self, snapshot: Snapshot) -> None:
        """Called on every change (cheap: subclasses throttle)."""

    def close(self) -> None:
        """The run ended (normally or not)."""


class LineProgress(Progress):
    """A line every `interval` seconds (a timer: a long batch still shows life), and one at the end."""

    def __init__(self, interval: float | None = None, echo: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.interval = interval if interval is not None else float(
            os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS))
        self.echo = echo or _print_now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self.echo(self.snapshot().line())
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.echo(self.snapshot().line())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.echo(self.snapshot().line())


class BarProgress(Progress):
    """A tqdm bar (inputs committed / listed, inputs/s, ETA) on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._bar = None

    def start(self) -> None:
        from tqdm import tqdm

        super().start()
        self._bar = tqdm(total=None, unit="input", file=self._stream, dynamic_ncols=True, leave=True,
                         desc="scoring", mininterval=0.5)

    def show(self, snapshot: Snapshot) -> None:
        bar = self._bar
        if bar is None:
            return
        if snapshot.listing_done and bar.total != snapshot.listed:
            bar.total = snapshot.listed
        bar.set_postfix_str(f"{snapshot.errors} errors" if snapshot.errors else "", refresh=False)
        bar.update(snapshot.committed - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self.show(self.snapshot())
            self._bar.close()
            self._bar = None


def _print_now(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def interactive() -> bool:
    """A terminal a person watches (not CI, not piped)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_for(enabled: bool | None) -> Progress:
    """`--progress` (a bar on a terminal, else lines), `--no-progress` (nothing), default: by the terminal."""
    if enabled is False:
        return Progress()
    return BarProgress() if interactive() else LineProgress()
