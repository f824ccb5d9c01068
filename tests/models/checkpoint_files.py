"""Checkpoint files in every format the pipeline reads, written independently of its reader (test data only).

`WRITERS` maps a format name (the `format` a loaded checkpoint records) to (file suffix, writer(state, path));
a model family's extra formats (zhixuhao's Keras HDF5) come from its own helper.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch

Writer = Callable[[dict[str, torch.Tensor], Path], None]


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Independent writer: u64 LE header length, JSON header (padded to 8 bytes), raw little-endian bytes."""
    codes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
             torch.bool: "BOOL", torch.uint8: "U8"}
    header: dict = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        t = tensor.contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        blob = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def save_torch(state: dict[str, torch.Tensor], path: Path) -> None:
    torch.save(state, path)


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    path.write_bytes(write_safetensors(state))


def save_keras_hdf5(state: dict[str, torch.Tensor], path: Path) -> None:
    """zhixuhao only: the state_dict as the Keras full-model file upstream's training writes."""
    from tests.models.keras_files import keras_weights_from_state_dict, write_keras_h5

    path.write_bytes(write_keras_h5(keras_weights_from_state_dict(state)))


WRITERS: dict[str, tuple[str, Writer]] = {
    "torch": (".pth", save_torch),
    "safetensors": (".safetensors", save_safetensors),
    "keras-hdf5": (".hdf5", save_keras_hdf5),
}
