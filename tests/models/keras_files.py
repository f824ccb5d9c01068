"""Keras HDF5 files in zhixuhao's layout, written with h5py the way Keras saves them (test data only).

Kernels are Keras' (kh, kw, in, out); layers are named as Keras 2 ("keras2": conv2d_1, ...) or tf.keras ("tf":
conv2d, conv2d_1, ...) names them. `keras_weights_from_state_dict` turns a zhixuhao torch state_dict back into
that layout, so a model can be saved as the Keras file upstream ships and read again.
"""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import torch

# (kernel, in, out) of the 24 Conv2D layers in Keras creation order; in=None is the image channels.
KERAS_CONVS = [(3, None, 64), (3, 64, 64), (3, 64, 128), (3, 128, 128), (3, 128, 256), (3, 256, 256),
               (3, 256, 512), (3, 512, 512), (3, 512, 1024), (3, 1024, 1024),
               (2, 1024, 512), (3, 1024, 512), (3, 512, 512), (2, 512, 256), (3, 512, 256), (3, 256, 256),
               (2, 256, 128), (3, 256, 128), (3, 128, 128), (2, 128, 64), (3, 128, 64), (3, 64, 64),
               (3, 64, 2), (1, 2, 1)]
# zhixuhao's model.layers order, by layer type (weightless layers included).
KERAS_LAYER_TYPES = (["input", "conv2d", "conv2d", "max_pooling2d", "conv2d", "conv2d", "max_pooling2d",
                      "conv2d", "conv2d", "max_pooling2d", "conv2d", "conv2d", "dropout", "max_pooling2d",
                      "conv2d", "conv2d", "dropout"]
                     + ["up_sampling2d", "conv2d", "concatenate", "conv2d", "conv2d"] * 4
                     + ["conv2d", "conv2d"])


def keras_weights(in_channels: int = 1, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-normal kernels (kh, kw, in, out) and small biases, float32, deterministic."""
    rng = np.random.default_rng(seed)
    out = []
    for k, cin, cout in KERAS_CONVS:
        cin = in_channels if cin is None else cin
        std = np.float32(np.sqrt(2 / (k * k * cin)))
        kernel = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * std
        out.append((kernel, rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)))
    return out


def keras_layer_names(naming: str) -> list[str]:
    """Layer names, Keras 2 standalone ("keras2": conv2d_1, ...) or tf.keras ("tf": conv2d, conv2d_1, ...)."""
    counts: dict[str, int] = {}
    names = []
    for kind in KERAS_LAYER_TYPES:
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        if kind == "input":
            names.append("input_1")
        elif naming == "keras2":
            names.append(f"{kind}_{n + 1}")
        else:
            names.append(kind if n == 0 else f"{kind}_{n}")
    return names


def write_keras_h5(weights: list[tuple[np.ndarray, np.ndarray]], layout: str = "model",
                   naming: str = "keras2", backend: str = "tensorflow",
                   split_layer_names: bool = False) -> bytes:
    """An HDF5 file in Keras' save layout: full model ("model") or save_weights ("weights")."""
    names = keras_layer_names(naming)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as root:
        if layout == "model":
            root.attrs["keras_version"] = b"2.2.4"
            root.attrs["backend"] = backend.encode()
            config = {"class_name": "Model", "config": {"name": "model_1"}}
            root.attrs["model_config"] = json.dumps(config).encode()
            root.attrs["training_config"] = json.dumps({"optimizer_config": {"class_name": "Adam"}}).encode()
            group = root.create_group("model_weights")
            optimizer = root.create_group("optimizer_weights")
            optimizer.attrs["weight_names"] = np.array([b"training/Adam/Variable:0"])
            optimizer.create_dataset("training/Adam/Variable:0", data=np.zeros((3, 3, 1, 64), np.float32))
        else:
            group = root
        group.attrs["keras_version"] = b"2.2.4"
        group.attrs["backend"] = backend.encode()
        encoded = np.array([n.encode() for n in names])
        if split_layer_names:  # Keras' chunking of attributes too large for the object header
            group.attrs["layer_names0"], group.attrs["layer_names1"] = encoded[:20], encoded[20:]
        else:
            group.attrs["layer_names"] = encoded
        pairs = iter(weights)
        for name in names:
            layer = group.create_group(name)
            if name.startswith("conv2d") and (pair := next(pairs, None)) is not None:
                layer.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in ("kernel", "bias")])
                layer.create_dataset(f"{name}/kernel:0", data=pair[0])
                layer.create_dataset(f"{name}/bias:0", data=pair[1])
            else:
                layer.attrs["weight_names"] = np.array([], dtype="S1")
    return buffer.getvalue()


def read_conv_arrays(data: bytes, naming: str = "keras2") -> list[tuple[np.ndarray, np.ndarray]]:
    """The 24 (kernel, bias) pairs read out of the file by their Keras names, in creation order."""
    conv_names = [n for n, kind in zip(keras_layer_names(naming), KERAS_LAYER_TYPES, strict=True)
                  if kind == "conv2d"]
    with h5py.File(io.BytesIO(data), "r") as root:
        group = root["model_weights"] if "model_weights" in root else root
        return [(group[f"{n}/{n}/kernel:0"][()], group[f"{n}/{n}/bias:0"][()]) for n in conv_names]


def keras_weights_from_state_dict(state: dict[str, torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A zhixuhao state_dict (weight, bias in creation order) as Keras (kernel (kh, kw, in, out), bias)."""
    tensors = list(state.values())
    assert len(tensors) == 2 * len(KERAS_CONVS), (f"expected {len(KERAS_CONVS)} convs, "
                                                  f"got {len(tensors)} tensors")
    return [(tensors[i].permute(2, 3, 1, 0).contiguous().numpy(), tensors[i + 1].numpy())
            for i in range(0, len(tensors), 2)]
