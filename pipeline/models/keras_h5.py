"""Read the layer weights of a Keras 2 / tf.keras HDF5 file (legacy `.h5`/`.hdf5` format) without Keras.

Two layouts are read, both written by Keras' own `save_weights_to_hdf5_group`:

* full model file (`model.save(path)`, `ModelCheckpoint(..., save_weights_only=False)`): the weights live in
  the group `model_weights`; the root also holds `model_config` (JSON, never evaluated here),
  `training_config` and, optionally, `optimizer_weights` (ignored);
* weights-only file (`model.save_weights(path)`, `save_weights_only=True`): the same structure at the root.

In that group the attribute `layer_names` lists every layer in `model.layers` order (layers without weights
too); each layer's group has the attribute `weight_names` (e.g. `b"conv2d_1/kernel:0"`, `b"conv2d_1/bias:0"`,
empty for weightless layers) and the arrays are the datasets `<layer>/<weight_name>`. Keras splits an
attribute too large for an HDF5 header into `name0`, `name1`, ...; both forms are read.

Keras 3's own `.weights.h5` / `.keras` formats are different and are refused with a message saying how to
re-save the model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError

WEIGHTS_GROUP = "model_weights"


@dataclass(frozen=True)
class KerasLayer:
    """One layer that carries weights, as stored in the file.

    Attributes:
        name: the layer name (e.g. "conv2d_1").
        weight_names: the stored names, in Keras order (e.g. "conv2d_1/kernel:0", "conv2d_1/bias:0").
        arrays: the arrays, same order, as numpy arrays in the file's dtype.
    """

    name: str
    weight_names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class KerasWeights:
    """The weighted layers of a Keras HDF5 file, in `layer_names` order.

    Attributes:
        layers: layers with at least one weight (weightless layers are dropped).
        layout: "model" (full model file) or "weights" (weights-only file).
        keras_version: the `keras_version` attribute ("" when absent).
        backend: the `backend` attribute ("" when absent), e.g. "tensorflow" or "theano".
    """

    layers: tuple[KerasLayer, ...]
    layout: str
    keras_version: str
    backend: str


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf8")
    return str(value)


def _attribute_list(group: Any, name: str) -> list[str] | None:
    """A list attribute, joined from Keras' `name0`, `name1`, ... chunks if it was split; None if absent."""
    if name in group.attrs:
        values = group.attrs[name]
    elif f"{name}0" in group.attrs:
        chunks, index = [], 0
        while f"{name}{index}" in group.attrs:
            chunks.extend(np.atleast_1d(group.attrs[f"{name}{index}"]).tolist())
            index += 1
        values = chunks
    else:
        return None
    return [_text(v) for v in np.atleast_1d(np.asarray(values, dtype=object)).tolist()]


def _attribute_text(*groups: Any, name: str) -> str:
    for group in groups:
        if name in group.attrs:
            return _text(group.attrs[name])
    return ""


def read_keras_weights(data: bytes) -> KerasWeights:
    """Read the weighted layers of a Keras 2 / tf.keras HDF5 model or weights file from memory.

    Args:
        data: the whole file's bytes.

    Returns:
        The layers that carry weights, in the file's `layer_names` order, with their arrays.

    Raises:
        CheckpointError: h5py is not installed, the bytes are not HDF5, or the file is not a Keras 2 HDF5
            model/weights file (e.g. Keras 3 `.weights.h5`, a missing layer group or dataset).
    """
    try:
        import h5py
    except ImportError as err:
        raise CheckpointError(
            "Reading a Keras HDF5 checkpoint needs h5py, which is not installed. "
            "Install it with `pip install h5py`.") from err
    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError as err:
        raise CheckpointError(
            f"The file is not a readable HDF5 file ({err}). Fetch it again; if it was cut short, compare "
            "its size with the source.") from err
    with handle as root:
        if WEIGHTS_GROUP in root and isinstance(root[WEIGHTS_GROUP], h5py.Group):
            group, layout = root[WEIGHTS_GROUP], "model"
        else:
            group, layout = root, "weights"
        layer_names = _attribute_list(group, "layer_names")
        if layer_names is None:
            keras3 = "layers" in root or "vars" in root
            kind = "a Keras 3 `.weights.h5` file" if keras3 else "not a Keras 2 / tf.keras HDF5 file"
            entries = ", ".join(list(root.keys())[:8]) or "none"
            raise CheckpointError(
                f"Expected a Keras HDF5 model or weights file with a 'layer_names' attribute, but this is "
                f"{kind} (top-level entries: {entries}). Load the model in Keras and re-save it in the "
                "HDF5 format: `model.save('unet.h5')` or "
                "`model.save_weights('unet_weights.h5')` (Keras 3: use a `.h5` file name).")
        keras_version = _attribute_text(group, root, name="keras_version")
        backend = _attribute_text(group, root, name="backend")
        layers = []
        for layer_name in layer_names:
            if layer_name not in group:
                raise CheckpointError(
                    f"Keras file lists layer {layer_name!r} in 'layer_names' but has no group for it. The "
                    "file is damaged or was not written by Keras: re-save it with `model.save(path)`.")
            layer_group = group[layer_name]
            weight_names = _attribute_list(layer_group, "weight_names") or []
            if not weight_names:
                continue
            arrays = []
            for weight_name in weight_names:
                if weight_name not in layer_group:
                    raise CheckpointError(
                        f"Keras layer {layer_name!r} lists weight {weight_name!r} but the file has no such "
                        "dataset. The file is damaged or incomplete: re-save it with `model.save(path)`.")
                try:
                    arrays.append(np.asarray(layer_group[weight_name][()]))
                except OSError as err:
                    raise CheckpointError(
                        f"Keras weight {weight_name!r} of layer {layer_name!r} cannot be read ({err}). The "
                        "file is corrupt: fetch it again.") from err
            layers.append(KerasLayer(layer_name, tuple(weight_names), tuple(arrays)))
    return KerasWeights(tuple(layers), layout, keras_version, backend)
