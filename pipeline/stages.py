"""The per-batch work of a run: decode + preprocess (CPU tasks) and inference + post-processing (actors).

Batches are dicts of numpy arrays, one entry per column. Images travel between stages as raw uint8 bytes with
their shape, so no stage depends on Ray's tensor extension types. A row that fails keeps flowing with `error`
set and its payload dropped, so every input ends as a result or a recorded error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

import numpy as np

from pipeline.backends import BackendSpec, create_backend
from pipeline.datasets import LabelRule
from pipeline.io.fs import S3Options
from pipeline.io.images import DEFAULT_MAX_PIXELS, check_same_size, open_image
from pipeline.io.rows import (
    PASSTHROUGH_COLUMNS,
    PREDICTED_COLUMNS,
    PREPARED_COLUMNS,
    failed,
    object_column,
    pack,
    record_failure,
    unpack,
)


def preprocess_batch(batch: dict[str, np.ndarray], *, processing: Any, label_rule: LabelRule | None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """Decode images and labels and run the processing's `prepare` (Ray Data task, batch_format "numpy")."""
    n = len(batch["id"])
    out: dict[str, list] = {key: list(batch[key]) for key in PASSTHROUGH_COLUMNS}
    for key in PREPARED_COLUMNS[len(PASSTHROUGH_COLUMNS):]:
        out[key] = [0] * n if key in ("height", "width") else [None] * n
    for i in range(n):
        if failed(out["error"][i]):
            continue
        stage = "decode"
        try:
            image = open_image(batch["image"][i], max_pixels=max_pixels, what="image")
            out["width"][i], out["height"][i] = image.size
            if label_rule is not None:
                stage = "label"
                label_image = open_image(batch["label"][i], max_pixels=max_pixels, what="label")
                label = label_rule(label_image)
                check_same_size(image.size, label)
            stage = "preprocess"
            prepared = processing.prepare(image)
            out["net"][i], out["net_shape"][i] = pack(prepared.image)
            out["meta"][i] = json.dumps(prepared.meta)
            if label_rule is not None:
                out["label"][i], out["label_shape"][i] = pack(processing.prepare_label(label, prepared.meta))
        except Exception as err:  # InputError, or a decoder bug on an exotic file: recorded, never fatal
            record_failure(out, i, stage, err)
    return {key: object_column(out[key]) for key in PREPARED_COLUMNS}


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc). Images of many sizes make the forward pass allocate
    buffers of many sizes; without this an actor's resident memory creeps up over a long run instead of
    staying flat."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(ctypes.CDLL(libc_name), "malloc_trim"):
        ctypes.CDLL(libc_name).malloc_trim(0)


class Predictor:
    """Inference actor: builds its backend once, then turns preprocessed rows into class masks.

    Rows are grouped by network input shape (milesial's scale keeps each image's aspect ratio) and run in
    chunks of at most `spec.batch_size`. Post-processing back to each image's size happens here, next to the
    logits, so only uint8 masks leave the actor.
    """

    def __init__(self, spec: BackendSpec, processing: Any, s3: S3Options | None = None) -> None:
        self.spec = spec
        self.processing = processing
        self.backend = create_backend(spec, processing.to_network_input, s3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        out: dict[str,
                  list] = {key: list(batch[key]) if key in batch else [None] * n for key in PREDICTED_COLUMNS}
        groups: dict[str, list[int]] = {}
        for i in range(n):
            if not failed(out["error"][i]):
                groups.setdefault(batch["net_shape"][i], []).append(i)
        for shape, rows in groups.items():
            for start in range(0, len(rows), self.spec.batch_size):
                chunk = rows[start:start + self.spec.batch_size]
                self._run_chunk(batch, out, shape, chunk)
        _release_free_memory()
        return {key: object_column(out[key]) for key in PREDICTED_COLUMNS}

    def _run_chunk(self, batch: dict[str, np.ndarray], out: dict[str, list], shape: str,
                   chunk: list[int]) -> None:
        images = np.stack([unpack(batch["net"][i], shape) for i in chunk])
        try:
            outputs = self.backend.run(images)
        except Exception as err:  # recorded per image; --max-errors stops a run whose backend keeps failing
            for i in chunk:
                record_failure(out, i, "inference", err)
            return
        for j, i in enumerate(chunk):
            try:
                mask = self.processing.finish(outputs[j], json.loads(batch["meta"][i]))
                out["mask"][i], out["mask_shape"][i] = pack(mask)
            except Exception as err:
                record_failure(out, i, "postprocess", err)
