"""A test-only inference backend with a known answer, loaded via the `package.module:factory` backend name.

`RedChannelBackend` needs no network: class 1's logit is the image's red channel (the processing's x / 255)
and class 0's is 0.5, so the mask is `red >= 128` exactly. It records the batch shapes it was given, and
raises for batches whose images are `spec.options["fail_on_height"]` rows high (a device that fails mid-run).
"""

from __future__ import annotations

import numpy as np

from pipeline.backends.base import BackendSpec, ToNetworkInput
from pipeline.io.fs import S3Options


class RedChannelBackend:
    name = "red-channel"

    def __init__(self, spec: BackendSpec, to_network_input: ToNetworkInput,
                 s3: S3Options | None = None) -> None:
        self.calls: list[tuple[int, ...]] = []
        self._to_network_input = to_network_input
        self._fail_on_height = spec.options.get("fail_on_height")
        self.closed = False

    def run(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(images.shape)
        if images.shape[1] == self._fail_on_height:
            raise RuntimeError(f"device lost on a batch of {images.shape[0]}")
        red = self._to_network_input(images)[:, :1]  # (N, 1, h, w) float32 in [0, 1]
        return np.concatenate([np.full_like(red, 0.5), red], axis=1)

    def close(self) -> None:
        self.closed = True


def expected_mask(image: np.ndarray) -> np.ndarray:
    """The mask RedChannelBackend + an arg-max at the network size give for an (h, w, 3) uint8 image."""
    return (image[:, :, 0] >= 128).astype(np.uint8)
