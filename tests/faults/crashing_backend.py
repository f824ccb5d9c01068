"""A test-only inference backend, loaded through the `package.module:factory` backend extension point
(`pipeline.backends.external_backend`):
RunConfig.create(backend="tests.faults.crashing_backend:FaultyBackend").

It is the torch backend with two faults a test can switch on through `backend_options`:

* `crash_on_sha256` + `crash_marker`: the first batch that holds the image whose network input has this
  SHA-256 kills the actor's process (`os._exit`, no clean-up, as an OOM kill or a segfault would). The marker
  file, created atomically, makes it happen once per test even though the restarted actor sees the same batch
  again. With `crash_every_time` the batch kills every actor that runs it (a "poison" input).
* `seconds_per_batch`: sleep before each batch, so that a run lasts long enough to be interrupted mid-way.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from pipeline.backends.base import BackendSpec, ToNetworkInput
from pipeline.backends.torch_backend import TorchBackend
from pipeline.io.fs import S3Options


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of one network-size uint8 image, as the backend receives it."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


class FaultyBackend:
    name = "faulty-torch"

    def __init__(self, spec: BackendSpec, to_network_input: ToNetworkInput,
                 s3: S3Options | None = None) -> None:
        self._inner = TorchBackend(spec, to_network_input, s3)
        self._crash_on = spec.options.get("crash_on_sha256")
        self._marker = spec.options.get("crash_marker")
        self._every_time = bool(spec.options.get("crash_every_time", False))
        self._delay = float(spec.options.get("seconds_per_batch", 0))

    def run(self, images: np.ndarray) -> np.ndarray:
        if self._delay:
            time.sleep(self._delay)
        if self._crash_on and any(image_digest(image) == self._crash_on for image in images):
            self._crash()
        return self._inner.run(images)

    def _crash(self) -> None:
        """Die at once, recording the pid in the marker file; once only unless crash_every_time."""
        try:
            fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not self._every_time:
                return  # crashed once already: behave
            fd = os.open(self._marker, os.O_APPEND | os.O_WRONLY)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os._exit(1)

    def close(self) -> None:
        self._inner.close()
