"""`unet-pipeline export`: a static, folded opset-11 ONNX file equal to torch, and a vamc yaml and VDSP JSON
that differ from the zoo's UNet files only in paths, names, sizes and the calibration method."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import factories
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner
from reference_weights import write_deterministic_checkpoint

from pipeline.cli import cli
from pipeline.defaults import default_checkpoint
from pipeline.export.onnx import export_onnx, export_static_onnx, static_graph_problems
from pipeline.models import load_model

# VastModelZOO cv/segmentation/unet/build_in/build/milesial_unet.yaml, as data (its values, in its key order).
ZOO_MILESIAL_YAML = {
    "name": "milesial_unet_run_stream_int8",
    "frontend": {"shape": {"input": [1, 3, 512, 512]}, "type": "onnx",
                 "checkpoint": "./onnx/unet_scale0.5/unet_scale0.5-512.onnx", "dtype": "fp32"},
    "backend": {"type": "tvm_vacc", "dtype": "int8", "compile": {"data_transport_mode": 1},
                "quantize": {"calibrate_mode": "kl_divergence", "quantize_per_channel": True,
                             "quantize_dsp_ops": ["vacc_upsampling"]}},
    "dataset": {"type": "tvm", "path": "/path/to/carvana/imgs", "sampler": {"suffix": "jpg",
                                                                            "get_data_num": 50},
                "process_ops": [{"type": "DecodeImage", "cv2_flags": 1}, {"type": "Resize", "size": [512,
                                                                                                     512]},
                                {"type": "Normalize", "norm_type": None}, {"type": "ToTensor"}]},
    "workspace": {"path": "./deploy_weights/"},
}
# ... and build_in/vdsp_params/milesial-unet_scale0.5-vdsp_params.json.
ZOO_MILESIAL_VDSP = {"OpType": "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR", "OpConfig": {
    "IimageFormat": "RGB_PLANAR", "IimageWidth": 512, "IimageHeight": 512, "OimageWidth": 512,
    "OimageHeight": 512,
    "IimageWidthPitch": 512, "IimageHeightPitch": 512, "Mean": [0.485107421875, 0.4560546875, 0.406005859375],
    "Std": [0.22900390625, 0.2239990234375, 0.2249755859375], "NormaType": "DIV255",
    "ColorCvtCode": "NO_CHANGE",
    "ResizeType": "BILINEAR_CV"}}


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    root = factories.write_pairs(tmp_path_factory.mktemp("calibration"), factories.samples(3, first=900),
                                 ext=".jpg")
    return root / "images"


def _export(*args: str) -> str:
    result = CliRunner().invoke(cli, ["export", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _run_against_torch(onnx_path: Path, checkpoint: str, model: str, shape: tuple[int, int,
                                                                                  int]) -> onnx.ModelProto:
    """The file is static (1, C, H, W), opset 11, without shape computation, and equals torch."""
    loaded = load_model(model, checkpoint)
    exported = onnx.load(str(onnx_path))
    assert exported.opset_import[0].version == 11
    assert static_graph_problems(exported) == []
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1,
                                             *shape]  # vamc compiles one shape, as the zoo's frontend.shape
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    return exported


def _zoo_shaped(config: dict, zoo: dict) -> dict:
    """`config` with what may differ from the zoo file (paths, names, sizes, calibration) set to the zoo's."""
    out = json.loads(json.dumps(config))
    out["name"] = zoo["name"]
    (input_name, _), = out["frontend"]["shape"].items()
    out["frontend"]["shape"] = dict(zoo["frontend"]["shape"])
    out["frontend"]["checkpoint"] = zoo["frontend"]["checkpoint"]
    out["backend"]["quantize"]["calibrate_mode"] = zoo["backend"]["quantize"]["calibrate_mode"]
    out["dataset"]["path"] = zoo["dataset"]["path"]
    out["dataset"]["sampler"] = dict(zoo["dataset"]["sampler"])
    out["dataset"]["process_ops"][1]["size"] = zoo["dataset"]["process_ops"][1]["size"]
    assert input_name == "input"
    return out


def test_packaged_model_exports_static_folded_like_the_zoo(tmp_path):
    """The packaged milesial model at 512: 297 nodes with shape arithmetic in the dynamic export; the static
    export folds to the network's own 49 ops."""
    loaded = load_model(None, default_checkpoint())
    dynamic = export_onnx(loaded, (512, 512))
    assert len(dynamic.graph.node) == 297 and {"Shape", "Gather", "ConstantOfShape"} <= {
        n.op_type for n in dynamic.graph.node}
    assert static_graph_problems(dynamic)  # dynamic batch, Shape ops
    output = _export("--precision", "fp16", "--input-size", "512", "--out", str(tmp_path))
    name = "milesial-fp16-none-3_512_512-vacc"
    assert f"wrote {tmp_path / name}.onnx (49 nodes, opset 11" in output
    static = _run_against_torch(tmp_path / f"{name}.onnx", default_checkpoint(), "milesial", (3, 512, 512))
    assert Counter(n.op_type for n in static.graph.node) == {"Conv": 19, "Relu": 18, "MaxPool": 4,
                                                             "ConvTranspose": 4, "Concat": 4}


@pytest.mark.parametrize("name, config, size", [
    ("milesial", {"num_classes": 4, "base_channels": 8}, (96, 100)),  # 100: one Pad with constant pads stays
    ("bubbliiiing-vgg16", {"num_classes": 3}, (64, 64)),
    ("bubbliiiing-resnet50", {"num_classes": 3}, (64, 96)),
])  # zhixuhao: test_zhixuhao_export_is_one_channel_with_an_rgb_planar_vdsp_json
def test_static_export_of_every_family_equals_torch(tmp_path, name, config, size):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", name, **config)
    loaded = load_model(name, checkpoint)
    model = export_static_onnx(loaded, size)
    assert static_graph_problems(model) == []
    assert not {"Shape", "Gather", "Unsqueeze", "Cast", "ConstantOfShape", "Reshape", "Slice"} & {
        n.op_type for n in model.graph.node}
    channels = int(loaded.module.in_channels)
    x = np.random.default_rng(1).random((1, channels, *size), dtype=np.float32)
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got[0], expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_int8_export_differs_from_the_zoo_files_only_in_paths_names_sizes_and_calibration(tmp_path,
                                                                                          calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=4,
                                                base_channels=8)
    output = _export("-c", checkpoint, "--input-size", "96x128", "--calibration", "kl_tensorrt",
                     "--calibration-data", str(calibration_folder), "--calibration-images", "3",
                     "--out", str(tmp_path / "export"))
    name = "milesial-int8-kl_divergence-3_96_128-vacc"
    assert f"vamc compile {name}.yaml" in output
    config = yaml.safe_load((tmp_path / "export" / f"{name}.yaml").read_text())
    assert config["name"] == name and config["frontend"]["checkpoint"] == f"./{name}.onnx"
    assert config["frontend"]["shape"] == {"input": [1, 3, 96, 128]}
    assert config["dataset"]["path"] == str(calibration_folder.resolve())
    assert config["dataset"]["sampler"] == {"suffix": "jpg", "get_data_num": 3}
    assert config["dataset"]["process_ops"][1] == {"type": "Resize", "size": [96, 128]}
    assert list(config) == list(ZOO_MILESIAL_YAML)
    assert _zoo_shaped(config, ZOO_MILESIAL_YAML) == ZOO_MILESIAL_YAML
    vdsp = json.loads((tmp_path / "export" / f"{name}-vdsp_params.json").read_text())
    sizes = {"IimageWidth": 128, "IimageHeight": 96, "OimageWidth": 128, "OimageHeight": 96,
             "IimageWidthPitch": 128, "IimageHeightPitch": 96}
    assert vdsp == {**ZOO_MILESIAL_VDSP, "OpConfig": {**ZOO_MILESIAL_VDSP["OpConfig"], **sizes}}
    _run_against_torch(tmp_path / "export" / f"{name}.onnx", checkpoint, "milesial", (3, 96, 128))


def test_get_data_num_is_the_number_of_images_really_there(tmp_path, calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=4,
                                                base_channels=8)
    (calibration_folder.parent / "notes.txt").write_text("not an image")
    output = _export("-c", checkpoint, "--input-size", "64", "--calibration-data", str(calibration_folder),
                     "--out", str(tmp_path / "out"))  # --calibration-images 50 by default
    config = yaml.safe_load((tmp_path / "out" / "milesial-int8-kl_divergence-3_64_64-vacc.yaml").read_text())
    assert config["dataset"]["sampler"] == {"suffix": "jpg", "get_data_num": 3}
    assert "has 3 .jpg images, fewer than --calibration-images 50: get_data_num is 3" in output


def test_fp16_export_keeps_the_quantize_and_dataset_sections(tmp_path, calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=2,
                                                base_channels=8,
                                                bilinear=True)
    _export("-c", checkpoint, "--shape", "3x64x64", "--precision", "fp16", "--out", str(tmp_path / "out"))
    name = "milesial-fp16-none-3_64_64-vacc"
    text = (tmp_path / "out" / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["backend"] == {"type": "tvm_vacc", "dtype": "fp16", "compile": {"data_transport_mode": 1},
                                 "quantize": {"calibrate_mode": "kl_divergence", "quantize_per_channel": True,
                                              "quantize_dsp_ops": ["vacc_upsampling"]}}  # bilinear resize
    assert config["dataset"]["path"] == "/path/to/calibration/images"  # placeholder, as the zoo's fp16 yamls
    assert config["dataset"]["sampler"] == {"suffix": "jpg", "get_data_num": 50}
    assert "fp16: vamc does not read `quantize` and `dataset`" in text
    _run_against_torch(tmp_path / "out" / f"{name}.onnx", checkpoint, "milesial", (3, 64, 64))
    _export("-c", checkpoint, "--shape", "64", "--precision", "fp16", "--calibration-data",
            str(calibration_folder), "--out", str(tmp_path / "given"))
    given = yaml.safe_load((tmp_path / "given" / f"{name}.yaml").read_text())
    assert given["dataset"]["path"] == str(calibration_folder.resolve())
    runner = CliRunner()
    wrong = runner.invoke(cli, ["export", "-c", checkpoint, "--shape", "1x64x64", "--out",
                                str(tmp_path / "x")])
    assert wrong.exit_code != 0 and "takes 3 input channel(s)" in str(wrong.exception)
    missing = runner.invoke(cli, ["export", "-c", checkpoint, "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0 and "--calibration-data" in missing.output


def test_zhixuhao_export_is_one_channel_with_an_rgb_planar_vdsp_json(tmp_path, calibration_folder):
    checkpoint = write_deterministic_checkpoint(tmp_path / "z.pth", "zhixuhao", in_channels=1)
    _export("-m", "zhixuhao", "-c", checkpoint, "--input-size", "64", "--calibration", "percentile",
            "--calibration-data", str(calibration_folder), "--out", str(tmp_path / "out"))
    name = "zhixuhao-int8-percentile-1_64_64-vacc"
    config = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
    assert config["frontend"]["shape"] == {"input": [1, 1, 64, 64]}
    assert config["backend"]["quantize"] == {"calibrate_mode": "percentile", "quantize_per_channel": True}
    assert config["dataset"]["process_ops"][0] == {"type": "DecodeImage", "cv2_flags": 0}  # greyscale decode
    vdsp = json.loads((tmp_path / "out" / f"{name}-vdsp_params.json").read_text())
    assert vdsp["OpConfig"]["IimageFormat"] == "RGB_PLANAR"  # the zoo's JSON for one-channel models too
    _run_against_torch(tmp_path / "out" / f"{name}.onnx", checkpoint, "zhixuhao", (1, 64, 64))
