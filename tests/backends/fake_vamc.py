"""A fake `vamc compile`: writes the files the fake `vaststreamx` (tests/fakes) loads, for a torch checkpoint.

Files, as vamc lays them out: `<dir>/<name>.so` (a marker; the fake never runs it), `<dir>/<name>.json` (the
fake's sidecar under "vsx_fake": registry name, model config, input/output shapes, max batch size, precision),
`<dir>/<name>.params` (the weights, a torch state dict) and `<dir>/<name>-vdsp_params.json` (the zoo's UNet
VDSP JSON for the input size).

"Compilation" of the weights: every floating tensor is stored rounded to float16. For precision "int8", each
convolution weight (4-D) is first fake-quantized per output channel: scale = max|w| / 127, w = round(w /
scale)
* scale (float32; round half to even; a channel of zeros stays zero).

int8 also calibrates activations, as vamc does on its `dataset` images: the compiled network (the weights
above, float32 arithmetic, no activation quantization) runs on each calibration image (x / 255 rounded to
float16) and records |x| at the input of every Conv2d and ConvTranspose2d; the threshold T of each is max |x|
(`calibrate_mode` "max") or the 99.99th percentile of |x| ("percentile", numpy's default interpolation over
all values). The thresholds go into the sidecar ("activation_thresholds"); the fake runtime quantizes those
inputs per tensor, symmetric int8 (x -> clamp(round(x / s), -127, 127) * s, s = float32(T / 127)).
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.models import load_model

FAKES_DIR = Path(__file__).resolve().parent.parent / "fakes"


def put_fake_sdk_on_path(monkeypatch) -> None:
    """Make `import vaststreamx` find the fake in this process; after the test, neither the path entry nor the
    imported modules are left behind (so a later test sees no SDK)."""
    monkeypatch.syspath_prepend(str(FAKES_DIR))
    importlib.import_module("vaststreamx")
    for name in [m for m in sys.modules if m == "vaststreamx" or m.startswith("vaststreamx.")]:
        module = sys.modules.pop(name)
        monkeypatch.setitem(sys.modules, name, module)  # recorded as absent: removed again at teardown


@dataclass(frozen=True)
class FakeCompiled:
    prefix: str
    vdsp_params: str
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    max_batch_size: int


def quantize_int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    scale = weight.abs().amax(dim=tuple(range(1, weight.ndim)), keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale).clamp(-127, 127) * scale


ACTIVATION_MODULES = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
CALIBRATE_MODES = ("max", "percentile")


def zoo_vdsp_json(height: int, width: int, norm_type: str = "DIV255",
                  image_format: str = "RGB_PLANAR") -> dict:
    """The zoo's milesial-unet_scale0.5-vdsp_params.json, with this size (RGB_PLANAR for every model)."""
    return {"OpType": "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR", "OpConfig": {
        "IimageFormat": image_format, "IimageWidth": width, "IimageHeight": height,
        "OimageWidth": width, "OimageHeight": height, "IimageWidthPitch": width, "IimageHeightPitch": height,
        "Mean": [0.485107421875, 0.4560546875, 0.406005859375], "Std": [0.22900390625, 0.2239990234375,
                                                                        0.2249755859375],
        "NormaType": norm_type, "ColorCvtCode": "NO_CHANGE", "ResizeType": "BILINEAR_CV"}}


def calibrate_activations(network: torch.nn.Module, images: np.ndarray, mode: str) -> dict[str, float]:
    """{module name: threshold} of the inputs of `network`'s convolutions over (N, h, w, c) uint8 `images`."""
    if mode not in CALIBRATE_MODES:
        raise ValueError(f"the fake vamc calibrates with {CALIBRATE_MODES}, not {mode!r}")
    seen: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in network.named_modules():
        if isinstance(module, ACTIVATION_MODULES):
            handles.append(module.register_forward_pre_hook(
                lambda m, inputs, name=name: seen.setdefault(name,
                                                             []).append(inputs[0].abs().flatten().numpy())))
    try:
        with torch.no_grad():
            for image in images:
                x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255).half().float()
                network(x[None])
    finally:
        for handle in handles:
            handle.remove()
    reduce = np.max if mode == "max" else (lambda v: np.percentile(v, 99.99))
    return {name: float(reduce(np.concatenate(values))) for name, values in seen.items()}


def compile_fake_vacc_model(checkpoint: str, out_dir: Path, *, model: str = "milesial",
                            input_size: tuple[int, int] = (64, 64), max_batch_size: int = 2,
                            precision: str = "fp16", name: str = "mod", norm_type: str = "DIV255",
                            calibration_images: np.ndarray | None = None, calibrate_mode: str = "max",
                            ) -> FakeCompiled:
    """Write the fake compiled suite for `checkpoint` into `out_dir` and return where it is.

    int8: `calibration_images` ((N, h, w, c) uint8 at the input size; default: 4 seeded random images)
    calibrate the activations with `calibrate_mode`.
    """
    loaded = load_model(model, checkpoint)
    in_channels, num_classes = loaded.module.in_channels, loaded.module.num_classes
    height, width = input_size
    state = {}
    for key, tensor in loaded.module.state_dict().items():
        if tensor.is_floating_point():
            if precision == "int8" and tensor.ndim == 4:
                tensor = quantize_int8_per_channel(tensor)
            tensor = tensor.half()
        state[key] = tensor
    sidecar = {"model": model, "model_config": dict(loaded.config), "precision": precision,
               "input_shape": [1, in_channels, height, width], "output_shape": [1, num_classes, height,
                                                                                width],
               "max_batch_size": max_batch_size}
    if precision == "int8":
        if calibration_images is None:
            calibration_images = np.random.default_rng(99).integers(0, 256, (4, height, width, in_channels),
                                                                    dtype=np.uint8)
        network = loaded.module.float().eval()
        network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        sidecar["calibrate_mode"] = calibrate_mode
        sidecar["activation_thresholds"] = calibrate_activations(network, calibration_images, calibrate_mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(f"{prefix}.params").write_bytes(buffer.getvalue())
    Path(f"{prefix}.so").write_bytes(b"fake vacc module\n")
    Path(f"{prefix}.json").write_text(json.dumps({"vsx_fake": sidecar}))
    vdsp_path = out_dir / f"{name}-vdsp_params.json"
    vdsp_path.write_text(json.dumps(zoo_vdsp_json(height, width, norm_type)))
    return FakeCompiled(str(prefix), str(vdsp_path), in_channels, num_classes, input_size, max_batch_size)
