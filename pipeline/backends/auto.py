"""`--backend auto` (the default): the fastest CPU backend that gives torch's masks on this machine.

On the CPU at fp32, ONNX Runtime runs the project's UNets 1.5-2.2x faster than torch channels-last (README,
Benchmarks; shared/reference/cpu-inference.md) with the same masks. `auto` takes it when onnxruntime is
importable and a probe shows it exact here: the job's first `PROBE_IMAGES` images, run through torch and
through the exported model on the driver, must give the same decisions at every pixel outside near ties
(`pipeline.metrics.ties`: a pixel whose torch top-2 logit gap is within float noise). Otherwise, and on
CUDA, it runs torch. Other precisions go to the backend that has them (int8: onnx; fp16, bf16: torch).

The export is the onnx backend's own (once per job, cached); the probe's verdict is cached beside it, keyed
by the model file, the input shape, the package versions and the CPU's features, so later jobs skip it. The
choice and its reason are recorded in the spec's options (`auto_reason`), metrics.json and the console.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import cpu_features
from pipeline.backends import onnx_backend, torch_backend
from pipeline.backends.base import BackendChoice, BackendEntry, BackendSpec, PrepareContext, ToNetworkInput
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.fs import S3Options
from pipeline.metrics.ties import DecisionDiff, compare_logits

PROBE_IMAGES = 2
PROBE_FOLDER = "auto-probe"


def _onnx_missing() -> str | None:
    """Why the onnx backend cannot run here (None: it can)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"onnxruntime is not installed ({err.name}: pip install onnxruntime onnx)"
    return None


def choose(spec: BackendSpec, context: PrepareContext) -> BackendChoice:
    """Pick torch or onnx for `spec` (name "auto"); returns the pick with its prepared spec."""
    if not spec.device.startswith("cpu"):
        return _pick("torch", f"--device {spec.device}: torch runs on the GPU", spec, context)
    if spec.precision == "int8":
        return _pick("onnx", "int8 runs on ONNX Runtime", spec, context)
    if spec.precision != "fp32":
        return _pick("torch", f"{spec.precision} runs on torch", spec, context)
    missing = _onnx_missing()
    if missing:
        return _pick("torch", missing, spec, context)
    onnx_spec = onnx_backend.ENTRY.prepare(dataclasses.replace(spec, name="onnx"), context)
    images = context.sample_images(PROBE_IMAGES)
    if not images:
        return _pick("torch", "no decodable image to probe ONNX Runtime with", spec, context)
    diff = _cached_probe(spec, onnx_spec, images, context)
    where = f"{len(images)} probe image(s), {diff.pixels} pixels, {diff.near_ties} near tie(s)"
    if diff.mismatches:
        return _pick("torch", f"ONNX Runtime fp32 differs from torch on {diff.mismatches} pixel(s) beyond "
                              f"near ties ({where})", spec, context)
    reason = (f"ONNX Runtime fp32 gives torch's masks ({where}, max logit difference "
              f"{diff.max_abs_error:.1e})")
    return _chosen("onnx", reason, onnx_spec)


def _pick(name: str, reason: str, spec: BackendSpec, context: PrepareContext) -> BackendChoice:
    entry = {"torch": torch_backend.ENTRY, "onnx": onnx_backend.ENTRY}[name]
    entry.check_precision(spec.precision)
    return _chosen(name, reason, entry.prepare(dataclasses.replace(spec, name=name), context))


def _chosen(name: str, reason: str, spec: BackendSpec) -> BackendChoice:
    return BackendChoice(name, reason,
                         dataclasses.replace(spec, options={**spec.options, "auto_reason": reason}))


def _cached_probe(spec: BackendSpec, onnx_spec: BackendSpec, images: list[Any],
                  context: PrepareContext) -> DecisionDiff:
    import onnxruntime
    import torch

    cpu = context.cpu or cpu_features.detect()
    key = {"onnx_sha256": onnx_spec.options["onnx_sha256"], "shape": list(images[0].shape),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": sorted(cpu.features),
           "images": len(images)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(context.cache_dir) / PROBE_FOLDER / f"{digest}.json"
    if path.exists():
        return DecisionDiff(**json.loads(path.read_text())["diff"])
    diff = probe(spec, onnx_spec, images, context.to_network_input, context.s3)
    fs.write_bytes(str(path), json.dumps({"key": key, "diff": dataclasses.asdict(diff)}, indent=1).encode())
    return diff


def probe(spec: BackendSpec, onnx_spec: BackendSpec, images: list[Any], to_network_input: ToNetworkInput,
          s3: S3Options | None = None) -> DecisionDiff:
    """Run each (h, w, c) uint8 image through torch fp32 and the prepared onnx spec; compare decisions."""
    threads = os.cpu_count() or 1
    reference = torch_backend.TorchBackend(dataclasses.replace(spec, name="torch", threads=threads),
                                           to_network_input, s3)
    try:
        runtime = onnx_backend.OnnxBackend(dataclasses.replace(onnx_spec, threads=threads), to_network_input,
                                           s3)
        try:
            total = DecisionDiff(0, 0, 0, 0.0)
            for image in images:
                total += compare_logits(runtime.run(image[None])[0], reference.run(image[None])[0])
            return total
        finally:
            runtime.close()
    finally:
        reference.close()


def _prepare(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    return choose(spec, context).spec


def _not_prepared(spec: BackendSpec, to_network_input: ToNetworkInput, s3: S3Options | None = None) -> Any:
    raise ConfigError("--backend auto picks torch or onnx on the driver: call "
                      "pipeline.backends.prepare_backend(spec, context) first, then create_backend on the "
                      "spec it returns (pipeline.run.run does).")


def _on_cpu(settings) -> bool:
    return not settings.device.startswith("cuda")


def _gpus(settings, cluster: Mapping[str, float]) -> int:
    return int(cluster.get("GPU", 0))


ENTRY = BackendEntry(
    name="auto",
    description="The default: ONNX Runtime fp32 where a probe shows it gives torch's masks on this CPU, else "
                "torch (always torch on CUDA); int8 on onnx, fp16/bf16 on torch.",
    precisions=("fp32", "fp16", "bf16", "int8"),
    create=_not_prepared,
    prepare=_prepare,
    runs_on_cpu=_on_cpu,
    devices=_gpus,
    actor_resources=torch_backend.ENTRY.actor_resources,
    check=torch_backend.ENTRY.check,
    choose=choose,
)
