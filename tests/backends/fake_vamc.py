"""A fake `vamc compile`: writes the files the fake `vaststreamx` (tests/fakes) loads, for a torch checkpoint.

Files, as vamc lays them out: `<dir>/<name>.so` (a marker; the fake never runs it), `<dir>/<name>.json` (the
fake's sidecar under "vsx_fake": registry name, model config, input/output shapes, max batch size, precision),
`<dir>/<name>.params` (the weights, a torch state dict) and `<dir>/<name>-vdsp_params.json` (the zoo's UNet VDSP
JSON for the input size).

"Compilation" of the weights: every floating tensor is stored rounded to float16. For precision "int8", each
convolution weight (4-D) is first fake-quantized per output channel: scale = max|w| / 127, w = round(w / scale)
* scale (float32; round half to even; a channel of zeros stays zero). Activations are not quantized: the fake's
int8 model is "int8 weights, fp16 activations".
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

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


def zoo_vdsp_json(channels: int, height: int, width: int, norm_type: str = "DIV255") -> dict:
    """The zoo's milesial-unet_scale0.5-vdsp_params.json, with this size (GRAY for 1-channel models)."""
    return {"OpType": "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR", "OpConfig": {
        "IimageFormat": "RGB_PLANAR" if channels == 3 else "GRAY", "IimageWidth": width, "IimageHeight": height,
        "OimageWidth": width, "OimageHeight": height, "IimageWidthPitch": width, "IimageHeightPitch": height,
        "Mean": [0.485107421875, 0.4560546875, 0.406005859375], "Std": [0.22900390625, 0.2239990234375,
                                                                        0.2249755859375],
        "NormaType": norm_type, "ColorCvtCode": "NO_CHANGE", "ResizeType": "BILINEAR_CV"}}


def compile_fake_vacc_model(checkpoint: str, out_dir: Path, *, model: str = "milesial",
                            input_size: tuple[int, int] = (64, 64), max_batch_size: int = 2,
                            precision: str = "fp16", name: str = "mod", norm_type: str = "DIV255") -> FakeCompiled:
    """Write the fake compiled suite for `checkpoint` into `out_dir` and return where it is."""
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
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(f"{prefix}.params").write_bytes(buffer.getvalue())
    Path(f"{prefix}.so").write_bytes(b"fake vacc module\n")
    Path(f"{prefix}.json").write_text(json.dumps({"vsx_fake": {
        "model": model, "model_config": dict(loaded.config), "precision": precision,
        "input_shape": [1, in_channels, height, width], "output_shape": [1, num_classes, height, width],
        "max_batch_size": max_batch_size}}))
    vdsp_path = out_dir / f"{name}-vdsp_params.json"
    vdsp_path.write_text(json.dumps(zoo_vdsp_json(in_channels, height, width, norm_type)))
    return FakeCompiled(str(prefix), str(vdsp_path), in_channels, num_classes, input_size, max_batch_size)
