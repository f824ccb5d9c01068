"""Driver side of the onnx backend: build the job's ONNX model once, cache it, hand it to every actor.

`prepare_onnx` runs in `prepare_backend`, once per job: it exports the checkpoint (dynamic batch, H and W),
applies the precision (fp16 emulation, or int8 calibration on the job's own images and QDQ quantization) and
writes the result under `<cache_dir>/onnx/`, named by a digest of everything the bytes depend on (checkpoint
sha256, model config, precision, opset, input-shape policy, calibration method and the exact calibration
inputs, package versions). A later job with the same settings reuses the file and skips export and
calibration. The fp32 export is itself a cache entry, from which the fp16 and int8 models are derived.

Actors get the bytes through Ray's object store (the spec carries an ObjectRef when Ray is running), so actors
on other nodes need no shared filesystem; the spec also names the cached file and its sha256, which is what a
backend built outside Ray (benchmarks, tests) reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import cpu_features
from pipeline.backends.base import BackendSpec
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.quantize import CALIBRATION_METHODS

FORMAT_VERSION = 1  # bump when the bytes for the same settings change (export or quantization code)
CACHE_FOLDER = "onnx"


def check_settings(spec: BackendSpec, calibration: str) -> None:
    """ConfigError for a precision, calibration method or device the onnx backend does not have."""
    if spec.precision == "int8" and calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, got "
                          f"{calibration!r}.")
    if spec.device != "cpu":
        raise ConfigError(f"--backend onnx runs on the CPU (onnxruntime's CPU provider), not --device "
                          f"{spec.device}: drop --device, or use --backend torch --device cuda.")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _inputs_digest(inputs: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for x in inputs:
        digest.update(repr(x.shape).encode())
        digest.update(np.ascontiguousarray(x, np.float32).tobytes())
    return digest.hexdigest()


def model_settings(loaded, precision: str, calibration: str | None, inputs: list[np.ndarray],
                   reduce_range: bool = True) -> dict[str, Any]:
    """Everything the model bytes depend on (the cache key, also written next to the file)."""
    from pipeline.export.onnx import OPSET
    from pipeline.quantize import calibration as calib
    from pipeline.quantize import int8, thresholds

    settings: dict[str, Any] = {
        "format": FORMAT_VERSION, "model": loaded.family.name, "config": loaded.config,
        "checkpoint_sha256": loaded.checkpoint.sha256, "precision": precision, "opset": OPSET,
        "input_size": "dynamic", "versions": _versions(),
    }
    if precision == "int8":
        settings["calibration"] = {
            "method": calibration, "images": len(inputs), "inputs_sha256": _inputs_digest(inputs),
            "bins": calib.BINS, "percentile": thresholds.DEFAULT_PERCENTILE,
            "start_bin": thresholds.START_BIN,
            "per_channel": int8.PER_CHANNEL, "reduce_range": reduce_range,
        }
    return settings


def derive_model(fp32: bytes, precision: str, calibration: str | None, inputs: list[np.ndarray],
                 threads: int, reduce_range: bool = True) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, a summary for the sidecar file) of the fp32 export at `precision` (fp16 or int8)."""
    import onnx

    from pipeline.quantize import calibration as calib
    from pipeline.quantize import methods
    from pipeline.quantize.fp16 import emulate_fp16
    from pipeline.quantize.int8 import quantize_int8

    model = onnx.load_from_string(fp32)
    if precision == "fp16":
        return emulate_fp16(model).SerializeToString(), {}
    stats = calib.collect_statistics(model, inputs, threads=threads)
    ranges = calib.activation_ranges(stats, calibration or methods.DEFAULT)
    summary = {"ranges": {name: [float(low), float(high)] for name, (low, high) in ranges.items()},
               "observed": {name: [s.minimum, s.maximum] for name, s in stats.items()}}
    return quantize_int8(model, ranges, reduce_range).SerializeToString(), summary


def cached_model(folder: Path, settings: dict[str, Any], build) -> tuple[Path, bytes, bool]:
    """(path, bytes, reused) of the model for `settings`; `build()` -> (bytes, summary) makes it if absent.

    The file is named by the sha256 of the settings; a JSON sidecar records them with the build summary.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    path = folder / f"{settings['model']}-{settings['precision']}-{digest[:20]}.onnx"
    if path.exists():
        return path, path.read_bytes(), True
    started = time.perf_counter()
    data, summary = build()
    sidecar = {"settings": settings, **summary, "build_seconds": round(time.perf_counter() - started, 3)}
    fs.write_bytes(str(path.with_suffix(".json")), json.dumps(sidecar, indent=1).encode())
    fs.write_bytes(str(path), data)  # last: its presence means the pair is complete
    return path, data, False


def _share(data: bytes) -> Any:
    """An object-store reference to `data` when a Ray driver is running here, else None."""
    if "ray" not in sys.modules:
        return None
    import ray

    return ray.put(data) if ray.is_initialized() else None


def prepare_onnx(spec: BackendSpec, context) -> BackendSpec:
    """Build (or reuse) the job's ONNX model; return the spec with `options` naming it (see module docstring).

    Options added: onnx_path, onnx_sha256, onnx_cache_hit, onnx_build_seconds, int8_weight_bits (int8: 8 on
    CPUs with VNNI/AMX, else 7, from `context.cpu`), and onnx_model_ref (a Ray ObjectRef of the bytes) when
    Ray is running.

    Raises:
        ConfigError: bad settings, or int8 with no usable calibration image in the dataset.
    """
    from pipeline.export.onnx import export_onnx, import_onnx
    from pipeline.models import load_model

    check_settings(spec, context.settings.calibration)
    import_onnx()
    started = time.perf_counter()
    loaded = load_model(spec.model, spec.checkpoint, s3=context.s3, **spec.model_config)
    calibration = context.settings.calibration if spec.precision == "int8" else None
    inputs: list[np.ndarray] = []
    if calibration is not None:
        if context.settings.calibration_images < 1:
            raise ConfigError("--calibration-images must be at least 1 for int8, got "
                              f"{context.settings.calibration_images}.")
        images = context.sample_images(context.settings.calibration_images)
        if not images:
            raise ConfigError("int8 calibration found no usable image in --input (every file failed to "
                              "decode or preprocess): check the dataset, or use --precision fp32/fp16.")
        inputs = [context.to_network_input(image[None]) for image in images]
    folder = Path(context.cache_dir) / CACHE_FOLDER
    threads = os.cpu_count() or 1
    cpu = context.cpu or cpu_features.detect()  # the actor nodes' features (the run gathers them)
    reduce_range = not cpu.int8_full_range
    # The fp32 export is cached on its own, so fp16 and int8 (and later jobs) derive from it without
    # re-exporting.
    fp32_settings = model_settings(loaded, "fp32", None, [])

    def exported() -> tuple[bytes, dict[str, Any]]:
        return export_onnx(loaded).SerializeToString(), {}

    if spec.precision == "fp32":
        path, data, hit = cached_model(folder, fp32_settings, exported)
    else:
        path, data, hit = cached_model(
            folder, model_settings(loaded, spec.precision, calibration, inputs, reduce_range),
            lambda: derive_model(cached_model(folder, fp32_settings, exported)[1], spec.precision,
                                 calibration, inputs, threads, reduce_range))
    options = {**spec.options, "onnx_path": str(path), "onnx_sha256": hashlib.sha256(data).hexdigest(),
               "onnx_cache_hit": hit, "onnx_build_seconds": round(time.perf_counter() - started, 3)}
    if spec.precision == "int8":
        options["int8_weight_bits"] = 7 if reduce_range else 8
    ref = _share(data)
    if ref is not None:
        options["onnx_model_ref"] = ref
    return dataclasses.replace(spec, options=options)
