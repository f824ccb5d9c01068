"""Read model checkpoints safely: torch files (tensors only), safetensors (the `safetensors` library), Keras
HDF5.

A torch file is opened with `torch.load(..., weights_only=True)` only, so a pickle that would import or call
anything is refused before it runs. Whatever the format, the result is a plain `{name: CPU tensor}` dict with
wrapper dicts unwrapped and `module.` / `_orig_mod.` prefixes removed; milesial's `mask_values` list is kept
as metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.errors import CheckpointError, InputError, PipelineError
from pipeline.io.fs import S3Options, read_bytes

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
KERAS_FORMAT = "keras-hdf5"  # metadata["format"] of a Keras HDF5 file (its family converts it)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")
STRIP_PREFIXES = ("module.", "_orig_mod.")
RESAVE_HINT = "Re-save the weights alone with `torch.save(model.state_dict(), path)`"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a run records about the checkpoint it used.

    Attributes:
        uri: local path or s3:// URI as given.
        sha256: hex digest of the file's bytes.
        metadata: {"format": "torch" | "safetensors" | "keras-hdf5"}, plus "mask_values" (list of ints or
            of [r, g, b] lists) when the file holds one, "non_tensor_entries" (names of other non-tensor
            values that were set aside) and "safetensors_metadata" (the header's string map) where present.
    """

    uri: str
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read into memory: `state_dict` maps names to CPU tensors."""

    uri: str
    sha256: str
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> CheckpointInfo:
        return CheckpointInfo(self.uri, self.sha256, dict(self.metadata))


def read_checkpoint(uri: str, s3: S3Options | None = None) -> Checkpoint:
    """Read a checkpoint from a local path or an s3:// URI.

    Args:
        uri: the file (.pth/.pt torch file, .safetensors, or Keras .hdf5/.h5).
        s3: endpoint/region for s3:// URIs (None: from the environment).

    Returns:
        The Checkpoint; its state_dict holds CPU tensors in the file's dtypes.

    Raises:
        CheckpointError: missing, empty, truncated or unsafe file, or one that holds no tensors.
    """
    try:
        data = read_bytes(uri, s3)
    except InputError as err:
        raise CheckpointError(f"Cannot read checkpoint: {err}") from err
    if not data:
        raise CheckpointError(
            f"Checkpoint {uri} is empty (0 bytes): the download or copy failed; fetch it again.")
    metadata: dict[str, Any]
    if data.startswith(HDF5_MAGIC):
        state, metadata = _read_keras(uri, data), {"format": KERAS_FORMAT}
    elif _looks_like_safetensors(data):
        state, metadata = _read_safetensors(uri, data)
    else:
        state, metadata = _unwrap(uri, _torch_load(uri, data))
    return Checkpoint(uri, hashlib.sha256(data).hexdigest(), _strip_prefixes(state), metadata)


def _torch_load(uri: str, data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "Weights only load failed" not in str(err):
                raise CheckpointError(
                    f"Checkpoint {uri} is corrupt ({_first_line(err)}). Fetch it again.") from err
            found = re.search(r"GLOBAL (\S+)", str(err))
            what = f" (it references {found.group(1).rstrip('.,')})" if found else ""
            raise CheckpointError(
                f"Checkpoint {uri} holds code or Python objects other than tensors{what}, or is not a torch "
                f"checkpoint; it was refused without running it. {RESAVE_HINT} in a trusted environment, "
                "or convert it to .safetensors.") from err
        except (RuntimeError, EOFError) as err:
            raise CheckpointError(
                f"Checkpoint {uri} is truncated or corrupt ({_first_line(err)}). The copy or download was "
                "probably cut short: fetch the file again and compare its size/sha256 with the source."
            ) from err
        except Exception as err:  # torch's legacy reader fails with KeyError, ValueError, ... on random bytes
            raise CheckpointError(
                f"Checkpoint {uri} is not a checkpoint this pipeline reads ({type(err).__name__}: "
                f"{_first_line(err)}). Expected a torch .pth/.pt state_dict, a .safetensors file or a Keras "
                ".hdf5 model file.") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _unwrap(uri: str, obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the state_dict in what torch.load returned; set mask_values and other non-tensors aside."""
    metadata: dict[str, Any] = {"format": "torch"}
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, Mapping):
            break
        if "mask_values" in obj:
            metadata["mask_values"] = _check_mask_values(uri, obj["mask_values"])
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            what = f"a dict with keys {sorted(map(str, obj))[:10]}"
        raise CheckpointError(
            f"Checkpoint {uri} holds {what}, not a state_dict of tensors "
            f"(looked under {', '.join(WRAPPER_KEYS)}). {RESAVE_HINT}.")
    state, others = {}, []
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[str(key)] = value.detach().cpu()
        elif key != "mask_values":
            others.append(str(key))
    if others:
        metadata["non_tensor_entries"] = others
    return state, metadata


def _check_mask_values(uri: str, values: Any) -> list[Any]:
    """mask_values: a list of ints (grey levels) or of [r, g, b] int lists (colours)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(values, (list, tuple)) and values and (
            all(is_int(v) for v in values)
            or all(isinstance(v, (list, tuple)) and v and all(is_int(c) for c in v) for v in values)):
        return [list(v) if isinstance(v, (list, tuple)) else v for v in values]
    raise CheckpointError(
        f"Checkpoint {uri} has mask_values={values!r}; expected a non-empty list of ints or of "
        "[r, g, b] lists. "
        "Fix or delete that entry and re-save the file.")


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 2 <= header_len <= len(data) - 8 and data[8:9] == b"{"


def _read_safetensors(uri: str, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file, read by the `safetensors` library (tensors only, never code); its `__metadata__`
    string map (where milesial-style `mask_values` may live) comes from the header the library validated."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
    except SafetensorError as err:
        raise CheckpointError(f"Checkpoint {uri} is truncated or corrupt (safetensors: {_first_line(err)}). "
                              "Fetch the file again.") from err
    if not state:
        raise CheckpointError(f"Checkpoint {uri} is a safetensors file with no tensors. {RESAVE_HINT}.")
    metadata: dict[str, Any] = {"format": "safetensors"}
    header_len = int.from_bytes(data[:8], "little")
    extra = json.loads(data[8:8 + header_len]).get("__metadata__")
    if isinstance(extra, dict):
        metadata["safetensors_metadata"] = extra
        if "mask_values" in extra:
            try:
                metadata["mask_values"] = _check_mask_values(uri, json.loads(extra["mask_values"]))
            except (TypeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"Checkpoint {uri}: __metadata__ mask_values is not a JSON list; "
                                      "fix the header.") from err
    return state, metadata


def _read_keras(uri: str, data: bytes) -> dict[str, torch.Tensor]:
    """A Keras HDF5 file, converted by the model family that reads that format (`ModelFamily.converters`)."""
    from pipeline.models import MODELS

    converter = next((f.converters[KERAS_FORMAT] for _, f in MODELS.items() if KERAS_FORMAT in f.converters),
                     None)
    if converter is None:
        raise CheckpointError(f"Checkpoint {uri} is a Keras HDF5 file, and no registered model family reads "
                              "Keras files. Convert it to a torch state_dict first.")
    try:
        return dict(converter(data))
    except PipelineError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {uri} looks like HDF5 but cannot be read as a Keras model file "
            f"({type(err).__name__}: {_first_line(err)}). Save it with Keras `model.save(path)` or "
            "`ModelCheckpoint`, or fetch it again if it was cut short.") from err
