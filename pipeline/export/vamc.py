"""The build configuration Vastai's model compiler takes (`vamc compile <yaml>`), in the zoo's UNets' format.

Modelled on VastModelZOO's `cv/segmentation/unet/build_in/build/{milesial,bubbliiiing,keras}_unet.yaml`; the
result differs from those files only in paths, names, sizes and the calibration method:

* `frontend`: the static ONNX file (`pipeline.export.onnx.export_static_onnx`), its input name and shape
  [1, C, H, W], fp32;
* `backend`: `type: tvm_vacc`, `dtype: fp16 | int8`, `compile.data_transport_mode: 1` (all zoo UNets), and
  `quantize`: calibrate_mode, `quantize_per_channel: true`, and `quantize_dsp_ops: [vacc_upsampling]` where
  the network up-samples with a transposed convolution or a bilinear resize, as the zoo's milesial and
  bubbliiiing builds do (its keras build, nearest up-sampling, has none);
* `dataset`: the calibration images (folder, file suffix, how many, and the preprocessing DecodeImage ->
  Resize -> Normalize(none) -> ToTensor, i.e. x / 255 at the network size, what every processing of this
  project feeds the network). One-channel models decode greyscale (`cv2_flags: 0`), as the zoo's one-channel
  cnn_ctc build does; the zoo's three-channel builds decode colour (`cv2_flags: 1`, milesial's);
* `workspace.path`: where vamc writes the compiled model.

fp16 builds keep the `quantize` and `dataset` sections, as the zoo's UNet docs have it (compile the same yaml
with `backend.dtype: fp16`) and as its fp16 yamls that carry them do (with a placeholder `dataset.path` where
no images were given); vamc reads them for int8 only.

Calibration names (`pipeline.quantize.methods`) map to vamc's `calibrate_mode`: both KL variants (and the
`entropy` alias) -> kl_divergence, percentile -> percentile, minmax -> max. The zoo's compiled-model naming is
`<net>-<dtype>-<calibration>-<c_h_w>-vacc` (`none` for fp16), used here as the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.quantize.methods import get_method

WORKSPACE = "./deploy_weights/"
PLACEHOLDER_DATA = "/path/to/calibration/images"  # fp16 without --calibration-data, as the zoo's fp16 yamls
DEFAULT_SUFFIX = "jpg"
DEFAULT_IMAGES = 50  # the zoo's get_data_num for every UNet


@dataclass(frozen=True)
class CalibrationData:
    """What vamc's dataset sampler reads: a folder, the one file suffix it takes, and how many files."""

    path: str
    suffix: str
    count: int


def vamc_mode(calibration: str) -> str:
    """vamc's calibrate_mode for a calibration method or alias (UnknownNameError for an unknown one)."""
    return get_method(calibration).vamc_mode


def build_name(model: str, precision: str, calibration: str, shape: tuple[int, int, int]) -> str:
    """The zoo's compiled-model name, e.g. milesial-int8-kl_divergence-3_512_512-vacc."""
    mode = vamc_mode(calibration) if precision == "int8" else "none"
    return f"{model}-{precision}-{mode}-{'_'.join(str(v) for v in shape)}-vacc"


def upsamples_on_dsp(model) -> bool:
    """Whether the ONNX graph up-samples with ConvTranspose or a linear Resize (vamc's `vacc_upsampling`)."""
    for node in model.graph.node:
        if node.op_type == "ConvTranspose":
            return True
        if node.op_type == "Resize":
            modes = [a.s.decode() for a in node.attribute if a.name == "mode"]
            if modes and modes[0] == "linear":
                return True
    return False


def vamc_config(*, name: str, onnx_file: str, input_name: str, shape: tuple[int, int, int], precision: str,
                calibration: str, data: CalibrationData | None, dsp_upsampling: bool) -> dict[str, Any]:
    """The yaml document (as a dict) for one model; `shape` is (C, H, W); `data` None writes a placeholder."""
    channels, height, width = shape
    data = data or CalibrationData(PLACEHOLDER_DATA, DEFAULT_SUFFIX, DEFAULT_IMAGES)
    quantize: dict[str, Any] = {"calibrate_mode": vamc_mode(calibration), "quantize_per_channel": True}
    if dsp_upsampling:
        quantize["quantize_dsp_ops"] = ["vacc_upsampling"]
    return {
        "name": name,
        "frontend": {"shape": {input_name: [1, channels, height, width]}, "type": "onnx",
                     "checkpoint": onnx_file,
                     "dtype": "fp32"},
        "backend": {"type": "tvm_vacc", "dtype": precision, "compile": {"data_transport_mode": 1},
                    "quantize": quantize},
        "dataset": {
            "type": "tvm",
            "path": data.path,
            "sampler": {"suffix": data.suffix, "get_data_num": data.count},
            "process_ops": [
                {"type": "DecodeImage", "cv2_flags": 1 if channels == 3 else 0},  # cv2: 1 colour, 0 greyscale
                {"type": "Resize", "size": [height, width]},
                {"type": "Normalize", "norm_type": None},
                {"type": "ToTensor"},
            ],
        },
        "workspace": {"path": WORKSPACE},
    }


def vamc_yaml(config: dict[str, Any]) -> str:
    """The yaml text, with a header saying how to use it."""
    import yaml

    header = (f"# Build configuration for Vastai's model compiler, written by `unet-pipeline export`.\n"
              f"# Compile with: vamc compile {config['name']}.yaml (run it in this folder)\n")
    if config["backend"]["dtype"] == "fp16":
        header += ("# fp16: vamc does not read `quantize` and `dataset`; they are kept, as in the zoo's UNet "
                   "builds,\n# so that setting backend.dtype to int8 (and dataset.path to real images) makes "
                   "an int8 build.\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
