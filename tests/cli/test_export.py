"""`unet-pipeline export`: the ONNX file runs and equals torch; the vamc yaml and VDSP JSON say what vamc needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

import factories
from pipeline.cli import cli
from pipeline.models import load_model
from reference_weights import write_deterministic_checkpoint


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    root = factories.write_pairs(tmp_path_factory.mktemp("calibration"), factories.samples(3, first=900),
                                 ext=".jpg")
    return root / "images"


def _export(*args: str) -> str:
    result = CliRunner().invoke(cli, ["export", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _run_against_torch(onnx_path: Path, checkpoint: str, model: str, shape: tuple[int, int, int]) -> None:
    loaded = load_model(model, checkpoint)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", *shape]  # vamc compiles one H x W
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_export_writes_a_vamc_build_for_milesial(tmp_path, calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=4, base_channels=8)
    output = _export("-c", checkpoint, "--input-size", "96x128", "--calibration", "entropy",
                     "--calibration-data", str(calibration_folder), "--calibration-images", "3",
                     "--out", str(tmp_path / "export"))
    name = "milesial-int8-kl_divergence-3_96_128-vacc"
    assert f"vamc compile {name}.yaml" in output
    config = yaml.safe_load((tmp_path / "export" / f"{name}.yaml").read_text())
    assert config == {
        "name": name,
        "frontend": {"shape": {"input": [1, 3, 96, 128]}, "type": "onnx", "checkpoint": f"./{name}.onnx",
                     "dtype": "fp32"},
        "backend": {"type": "tvm_vacc", "dtype": "int8", "compile": {"data_transport_mode": 1},
                    "quantize": {"calibrate_mode": "kl_divergence", "quantize_per_channel": True,
                                 "quantize_dsp_ops": ["vacc_upsampling"]}},  # transposed-conv up-sampling
        "dataset": {"type": "tvm", "path": str(calibration_folder.resolve()),
                    "sampler": {"suffix": "jpg", "get_data_num": 3},
                    "process_ops": [{"type": "DecodeImage", "cv2_flags": 1}, {"type": "Resize", "size": [96, 128]},
                                    {"type": "Normalize", "norm_type": None}, {"type": "ToTensor"}]},
        "workspace": {"path": "./deploy_weights/"},
    }
    vdsp = json.loads((tmp_path / "export" / f"{name}-vdsp_params.json").read_text())
    assert vdsp["OpType"] == "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR"
    assert vdsp["OpConfig"]["NormaType"] == "DIV255" and vdsp["OpConfig"]["IimageFormat"] == "RGB_PLANAR"
    assert (vdsp["OpConfig"]["OimageHeight"], vdsp["OpConfig"]["OimageWidth"]) == (96, 128)
    _run_against_torch(tmp_path / "export" / f"{name}.onnx", checkpoint, "milesial", (3, 96, 128))


def test_fp16_export_has_no_quantization_and_checks_its_options(tmp_path):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=2, base_channels=8,
                                                bilinear=True)
    _export("-c", checkpoint, "--shape", "3x64x64", "--precision", "fp16", "--out", str(tmp_path / "out"))
    name = "milesial-fp16-none-3_64_64-vacc"
    config = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
    assert config["backend"] == {"type": "tvm_vacc", "dtype": "fp16", "compile": {"data_transport_mode": 1}}
    assert "dataset" not in config
    _run_against_torch(tmp_path / "out" / f"{name}.onnx", checkpoint, "milesial", (3, 64, 64))
    runner = CliRunner()
    wrong = runner.invoke(cli, ["export", "-c", checkpoint, "--shape", "1x64x64", "--out", str(tmp_path / "x")])
    assert wrong.exit_code != 0 and "takes 3 input channel(s)" in wrong.output
    missing = runner.invoke(cli, ["export", "-c", checkpoint, "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0 and "--calibration-data" in missing.output


def test_zhixuhao_export_is_greyscale_without_dsp_upsampling(tmp_path, calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "z.pth", "zhixuhao", in_channels=1)
    _export("-m", "zhixuhao", "-c", checkpoint, "--input-size", "64", "--calibration", "percentile",
            "--calibration-data", str(calibration_folder), "--out", str(tmp_path / "out"))
    name = "zhixuhao-int8-percentile-1_64_64-vacc"
    config = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
    assert config["frontend"]["shape"] == {"input": [1, 1, 64, 64]}
    assert config["backend"]["quantize"] == {"calibrate_mode": "percentile", "quantize_per_channel": True}
    assert config["dataset"]["process_ops"][0] == {"type": "DecodeImage", "cv2_flags": 0}
    _run_against_torch(tmp_path / "out" / f"{name}.onnx", checkpoint, "zhixuhao", (1, 64, 64))
