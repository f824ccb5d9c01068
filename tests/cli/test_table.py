"""`unet-pipeline table`: fp32/fp16/int8 rows per model, their figures, and the mIoU change against fp32."""

from __future__ import annotations

import json
from pathlib import Path

import factories
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from reference_weights import write_deterministic_checkpoint

from pipeline import cpu_features
from pipeline.backends.variants import parse_variants
from pipeline.cli import cli
from pipeline.models.figures import model_figures
from pipeline.sizes import parse_sizes
from pipeline.table import TableSpec, _dataset_for, binary_builtin_dataset

pytestmark = pytest.mark.integration
VARIANTS = ["torch:fp32", "onnx:fp16", "onnx:int8"]
ROWS = [("torch", "fp32", None), ("onnx", "fp16", None), ("onnx", "int8", "kl_pytorch_quantization"),
        ("onnx", "int8", "kl_tensorrt")]  # int8 with both KL variants side by side


def _dataset(root: Path, binary: bool = False) -> str:
    return str(factories.write_pairs(root, factories.samples(4, first=1000, binary=binary)))


def _table(tmp_path: Path, spec: dict) -> tuple[dict, str]:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["table", "--spec", str(tmp_path / "spec.yaml"), "--out",
                                      str(tmp_path / "table")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return (json.loads((tmp_path / "table" / "table.json").read_text()),
            (tmp_path / "table" / "table.md").read_text())


def _check_rows(rows: list[dict], model: str, config: dict, shape: tuple[int, int, int]) -> None:
    assert [(r["backend"], r["precision"], r["calibration"]) for r in rows] == ROWS
    figures = model_figures(model, shape, convention="seed", **config)
    fp32 = rows[0]
    for row in rows:
        metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert row["model"] == model and row["shape"] == "x".join(map(str, shape))
        assert row["miou"] == metrics["miou"] and row["num_images"] == 4 and row["num_errors"] == 0
        assert row["params"] == figures["parameters"] and row["gflops"] == pytest.approx(figures["gflops"],
                                                                                         abs=1e-3)
        assert row["images_per_second"] > 0
        assert metrics["backend"]["precision"] == row["precision"]
        if row["calibration"]:
            assert metrics["config"]["calibration"] == row["calibration"]
        if row is fp32:
            assert row["pixels_differing"] is None
        else:  # masks compared with the fp32 row's, image by image
            assert row["pixels"] == shape[1] * shape[2] * 4 and 0 <= row["pixels_differing"] <= row["pixels"]
        assert row["reference"] == (row is fp32)
        assert row["miou_change"] == pytest.approx(row["miou"] - fp32["miou"], abs=1e-12)
        print(f"{model:18s} {row['backend']}:{row['precision']}  mIoU {row['miou']:.4f}  "
              f"change {row['miou_change']:+.4f}")


def test_table_writes_fp32_fp16_int8_rows(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    config = {"num_classes": 4, "in_channels": 3, "base_channels": 8, "bilinear": False}
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", **config)
    data, markdown = _table(tmp_path, {
        "input": _dataset(tmp_path / "data"), "variants": VARIANTS, "shapes": [64],
        "models": [{"model": "milesial", "checkpoint": checkpoint}], "run": {"calibration_images": 4}})
    _check_rows(data["rows"], "milesial", config, (3, 64, 64))
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| model | backbone | source | FLOPs (G) | params (M) | mIoU (%) | dataset | "
                               "shape |")
    assert len(lines) == 2 + 4 and "| torch | fp32 |" in lines[2] and lines[2].endswith("| - | - |")
    assert lines[3].endswith("%) |")  # fp16: pixels differing from fp32, and their share
    assert ("| onnx | int8 (kl_pytorch_quantization) |" in lines[4]
            and "milesial/Pytorch-UNet@a013c80" in lines[4])
    assert "| onnx | int8 (kl_tensorrt) |" in lines[5]


@pytest.mark.slow
def test_table_rows_for_one_model_per_family(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    configs = {"milesial": {"num_classes": 4, "in_channels": 3, "base_channels": 8, "bilinear": False},
               "bubbliiiing-vgg16": {"num_classes": 4, "in_channels": 3}, "zhixuhao": {"in_channels": 1}}
    models = [{"model": name, "checkpoint": write_deterministic_checkpoint(tmp_path / f"{name}.pth", name,
                                                                           **cfg)}
              for name, cfg in configs.items()]
    models[2]["input"] = _dataset(tmp_path / "binary", binary=True)  # one foreground class for zhixuhao
    data, _ = _table(tmp_path, {"input": _dataset(tmp_path / "data"), "variants": VARIANTS, "shapes": [64],
                                "models": models, "run": {"calibration_images": 4}})
    rows = data["rows"]
    assert len(rows) == 3 * len(ROWS)
    for index, (name, config) in enumerate(configs.items()):
        group = rows[len(ROWS) * index:len(ROWS) * (index + 1)]
        _check_rows(group, name, config, (config["in_channels"], 64, 64))


def test_builtin_dataset_folds_classes_for_single_output_models(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pipeline.defaults.DEFAULT_COUNT", 3)
    root = Path(binary_builtin_dataset(count=3))
    from pipeline.defaults import default_dataset

    source = Path(default_dataset(3))
    names = sorted(p.name for p in (source / "images").iterdir())
    assert sorted(p.name for p in (root / "images").iterdir()) == names
    for name in names:
        label = np.asarray(Image.open(source / "masks" / name))
        folded = np.asarray(Image.open(root / "masks" / name))
        np.testing.assert_array_equal(folded, np.where(label == 255, 255, label > 0).astype(np.uint8))
    spec = TableSpec(input="", output=str(tmp_path), models=(), variants=parse_variants("torch:fp32"))
    uri, settings = _dataset_for(spec, {}, single_output=True)
    assert settings["class_names"] == ("background", "shape") and uri.endswith("-binary")
    assert _dataset_for(spec, {"input": "elsewhere"}, single_output=True) == ("elsewhere", {})


def test_variant_and_shape_parsing():
    assert [(v.backend, v.precision) for v in parse_variants("torch:fp32, onnx:int8")] == [("torch", "fp32"),
                                                                                         ("onnx", "int8")]
    assert parse_sizes("256,256x320") == ((256, 256), (256, 320)) and parse_sizes(None) == (None,)
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown backend 'onnx-int8'. Did you mean 'onnx'"):
        parse_variants("onnx-int8")
    with pytest.raises(ConfigError, match="--backend torch runs --precision fp32 | fp16, not 'int8'"):
        parse_variants("torch:int8")
    with pytest.raises(ConfigError, match="key=value"):
        parse_variants("torch:fp32:channels_last")


@pytest.mark.slow
@pytest.mark.skipif(not cpu_features.detect().bf16,
                    reason="this CPU has neither avx512_bf16 nor amx_bf16 (pipeline.cpu_features): torch "
                           "bf16 is refused here")
def test_table_shows_bf16_accuracy_beside_fp32(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    checkpoint = write_deterministic_checkpoint(tmp_path / "m.pth", "milesial", num_classes=4, in_channels=3,
                                                base_channels=8, bilinear=False)
    data, markdown = _table(tmp_path, {
        "input": _dataset(tmp_path / "data"), "variants": ["torch:fp32", "torch:bf16"], "shapes": [64],
        "models": [{"model": "milesial", "checkpoint": checkpoint}]})
    fp32, bf16 = data["rows"]
    assert (bf16["backend"], bf16["precision"]) == ("torch", "bf16")
    assert bf16["miou_change"] == pytest.approx(bf16["miou"] - fp32["miou"], abs=1e-12)
    assert bf16["pixels"] == 4 * 64 * 64 and bf16["pixels_differing"] < bf16["pixels"] // 20
    assert "| torch | bf16 |" in markdown.splitlines()[3]
