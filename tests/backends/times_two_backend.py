"""Backend added from a test file alone: `RunConfig.create(backend="tests.backends.times_two_backend:ENTRY")`.

Its "network" doubles the normalised input and appends zero channels up to the model's classes (MONAI's
`mult_two` trick), so the masks a run writes are known without any model: the arg-max over the image's
channels. With `backend_options={"sleep_seconds": S}` each call also takes S seconds without using the CPU (a
slow device); with `{"sleep_seconds_per_image": S}`, S seconds per image of the call.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.backends.base import BackendEntry, BackendSpec, ToNetworkInput
from pipeline.io.fs import S3Options

NUM_CLASSES = 4  # the packaged milesial checkpoint's classes, which the run's processing expects


class TimesTwoBackend:
    name = "times-two"

    def __init__(self, spec: BackendSpec, to_network_input: ToNetworkInput,
                 s3: S3Options | None = None) -> None:
        self._to_network_input = to_network_input
        self._sleep_seconds = float(spec.options.get("sleep_seconds", 0.0))
        self._sleep_seconds_per_image = float(spec.options.get("sleep_seconds_per_image", 0.0))

    def run(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self._sleep_seconds + self._sleep_seconds_per_image * len(images))
        x = 2.0 * self._to_network_input(images)
        zeros = np.zeros((x.shape[0], NUM_CLASSES - x.shape[1], *x.shape[2:]), np.float32)
        return np.concatenate([x, zeros], axis=1)

    def close(self) -> None:
        pass


ENTRY = BackendEntry(name="times-two", description="2 x the input (tests only)", precisions=("fp32",),
                     create=TimesTwoBackend)
