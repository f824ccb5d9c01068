"""The build configuration Vastai's model compiler takes (`vamc compile <yaml>`), in the format of the zoo's UNets.

Modelled on VastModelZOO's `cv/segmentation/unet/build_in/build/{milesial,bubbliiiing,keras}_unet.yaml`
(shared/reference/vacc-sdk.md, sections 2 and 4):

* `frontend`: the ONNX file, its input name and shape [1, C, H, W], fp32;
* `backend`: `type: tvm_vacc`, `dtype: fp16 | int8`, `compile.data_transport_mode: 1` (all zoo UNets);
* int8 only: `quantize` (calibrate_mode, `quantize_per_channel: true`, and `quantize_dsp_ops: [vacc_upsampling]`
  where the network up-samples with a transposed convolution or a bilinear resize, as the zoo's milesial and
  bubbliiiing builds do; its keras build, nearest up-sampling, has none) and `dataset` (calibration images:
  folder, file suffix, how many, and the preprocessing DecodeImage -> Resize -> Normalize(none) -> ToTensor, i.e.
  x / 255 at the network size, what every processing of this project feeds the network);
* `workspace.path`: where vamc writes the compiled model.

Calibration names map to vamc's: entropy -> kl_divergence, percentile -> percentile, minmax -> max. The zoo's
compiled-model naming is `<net>-<dtype>-<calibration>-<c_h_w>-vacc` (`none` for fp16), used here as the name.
"""

from __future__ import annotations

from typing import Any

VAMC_CALIBRATION = {"entropy": "kl_divergence", "percentile": "percentile", "minmax": "max"}
WORKSPACE = "./deploy_weights/"


def build_name(model: str, precision: str, calibration: str, shape: tuple[int, int, int]) -> str:
    """The zoo's compiled-model name, e.g. milesial-int8-kl_divergence-3_512_512-vacc."""
    mode = VAMC_CALIBRATION[calibration] if precision == "int8" else "none"
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
                calibration: str, calibration_data: str | None, calibration_suffix: str, calibration_images: int,
                dsp_upsampling: bool) -> dict[str, Any]:
    """The yaml document (as a dict) for one model; `shape` is (C, H, W)."""
    channels, height, width = shape
    config: dict[str, Any] = {
        "name": name,
        "frontend": {"shape": {input_name: [1, channels, height, width]}, "type": "onnx", "checkpoint": onnx_file,
                     "dtype": "fp32"},
        "backend": {"type": "tvm_vacc", "dtype": precision, "compile": {"data_transport_mode": 1}},
    }
    if precision == "int8":
        quantize: dict[str, Any] = {"calibrate_mode": VAMC_CALIBRATION[calibration], "quantize_per_channel": True}
        if dsp_upsampling:
            quantize["quantize_dsp_ops"] = ["vacc_upsampling"]
        config["backend"]["quantize"] = quantize
        config["dataset"] = {
            "type": "tvm",
            "path": calibration_data,
            "sampler": {"suffix": calibration_suffix, "get_data_num": calibration_images},
            "process_ops": [
                {"type": "DecodeImage", "cv2_flags": 1 if channels == 3 else 0},  # cv2: 1 colour, 0 greyscale
                {"type": "Resize", "size": [height, width]},
                {"type": "Normalize", "norm_type": None},
                {"type": "ToTensor"},
            ],
        }
    config["workspace"] = {"path": WORKSPACE}
    return config


def vamc_yaml(config: dict[str, Any]) -> str:
    """The yaml text, with a header saying how to use it."""
    import yaml

    header = (f"# Build configuration for Vastai's model compiler, written by `unet-pipeline export`.\n"
              f"# Compile with: vamc compile {config['name']}.yaml (run it in this folder)\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
