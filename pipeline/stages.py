"""The per-batch work of a run: decode + preprocess (CPU tasks) and inference + post-processing (actors).

Batches are dicts of numpy arrays, one entry per column. Images travel between stages as raw uint8 bytes with their
shape, so no stage depends on Ray's tensor extension types. A row that fails keeps flowing with `error` set and its
payload dropped, so every input ends as a result or a recorded error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from typing import Any

import numpy as np

from pipeline.backends import BackendSpec, create_backend
from pipeline.datasets import LabelRule
from pipeline.io.fs import S3Options
from pipeline.io.images import DEFAULT_MAX_PIXELS, check_same_size, open_image

PASSTHROUGH = ("shard", "row", "id", "source", "label_source", "error_stage", "error_class", "error")
MAX_MESSAGE_CHARS = 2000  # an exception with a huge text must not bloat errors.jsonl


def pack(array: np.ndarray) -> tuple[bytes, str]:
    """Raw bytes and a "h,w[,c]" shape string of a uint8 array."""
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes(), ",".join(str(d) for d in array.shape)


def unpack(data: bytes, shape: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(int(d) for d in shape.split(",")))


def failed(error: Any) -> bool:
    """Whether a row's `error` cell records a failure ("" or a missing value means the row is good)."""
    return isinstance(error, str) and error != ""


def _object_column(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def failure_message(path: str, err: BaseException | str) -> str:
    """The error text recorded for one input: names the file (unless the message does already), capped in size."""
    message = str(err) or type(err).__name__
    if path and path not in message:
        message = f"{path}: {message}"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 15] + " ...(truncated)"
    return message


def _fail(out: dict[str, list], i: int, stage: str, err: BaseException) -> None:
    """Record a failure on row i; a label's failure names the label file, any other the image."""
    path = out["label_source"][i] if stage == "label" and out["label_source"][i] else out["source"][i]
    out["error_stage"][i] = stage
    out["error_class"][i] = type(err).__name__
    out["error"][i] = failure_message(path, err)


def preprocess_batch(batch: dict[str, np.ndarray], *, processing: Any, label_rule: LabelRule | None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """Decode images and labels and run the processing's `prepare` (Ray Data task, batch_format "numpy")."""
    n = len(batch["id"])
    out: dict[str, list] = {key: list(batch[key]) for key in PASSTHROUGH}
    for key in ("height", "width"):
        out[key] = [0] * n
    for key in ("net", "net_shape", "meta", "label", "label_shape"):
        out[key] = [None] * n
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
            _fail(out, i, stage, err)
    return {key: _object_column(values) for key, values in out.items()}


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc). Images of many sizes make the forward pass allocate buffers of
    many sizes; without this an actor's resident memory creeps up over a long run instead of staying flat."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(ctypes.CDLL(libc_name), "malloc_trim"):
        ctypes.CDLL(libc_name).malloc_trim(0)


class Predictor:
    """Inference actor: builds its backend once, then turns preprocessed rows into class masks.

    Rows are grouped by network input shape (milesial's scale keeps each image's aspect ratio) and run in chunks
    of at most `spec.batch_size`. Post-processing back to each image's size happens here, next to the logits, so
    only uint8 masks leave the actor.
    """

    def __init__(self, spec: BackendSpec, processing: Any, s3: S3Options | None = None) -> None:
        self.spec = spec
        self.processing = processing
        self.backend = create_backend(spec, processing.to_network_input, s3)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        out: dict[str, list] = {key: list(batch[key]) for key in PASSTHROUGH + ("height", "width", "label",
                                                                              "label_shape")}
        out["mask"] = [None] * n
        out["mask_shape"] = [None] * n
        groups: dict[str, list[int]] = {}
        for i in range(n):
            if not failed(out["error"][i]):
                groups.setdefault(batch["net_shape"][i], []).append(i)
        for shape, rows in groups.items():
            for start in range(0, len(rows), self.spec.batch_size):
                chunk = rows[start:start + self.spec.batch_size]
                self._run_chunk(batch, out, shape, chunk)
        _release_free_memory()
        return {key: _object_column(values) for key, values in out.items()}

    def _run_chunk(self, batch: dict[str, np.ndarray], out: dict[str, list], shape: str, chunk: list[int]) -> None:
        images = np.stack([unpack(batch["net"][i], shape) for i in chunk])
        try:
            outputs = self.backend.run(images)
        except Exception as err:  # recorded per image; --max-errors stops a run whose backend keeps failing
            for i in chunk:
                _fail(out, i, "inference", err)
            return
        for j, i in enumerate(chunk):
            try:
                mask = self.processing.finish(outputs[j], json.loads(batch["meta"][i]))
                out["mask"][i], out["mask_shape"][i] = pack(mask)
            except Exception as err:
                _fail(out, i, "postprocess", err)
