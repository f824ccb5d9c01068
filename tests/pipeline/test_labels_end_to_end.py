"""The issue's isbi-membrane case, generated: binary 0/255 masks in the `pairs` layout, where 255 is "ignore".

Scored as they are, most label pixels are silently dropped and the mIoU looks perfect; the run must count the
ignored pixels, warn once on stderr and in metrics.json, and name the option that reads the masks right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.models import create_model

SIZE = 32


def _membrane_dataset(root: Path, count: int = 4) -> Path:
    """ISBI-like pairs: grey images, labels 0 (membrane, thin lines) / 255 (cell, ~75% of the pixels)."""
    rng = np.random.default_rng(5)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i in range(count):
        label = np.full((SIZE, SIZE), 255, np.uint8)
        label[:, 4 + i::8] = 0
        label[6 + i::10, :] = 0
        image = np.clip(label * 0.7 + rng.normal(0, 20, label.shape), 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3, -1), "RGB").save(root / "image" / f"{i}.png")
        Image.fromarray(label, "L").save(root / "label" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def membrane(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("isbi")
    torch.manual_seed(2)
    checkpoint = root / "binary.pth"
    torch.save(create_model("milesial", num_classes=2, in_channels=3, base_channels=8, bilinear=False)
               .state_dict(), checkpoint)
    return _membrane_dataset(root / "isbi-membrane"), str(checkpoint)


def _score(membrane, output: Path, *extra: str):
    data, checkpoint = membrane
    args = ["score", "-c", checkpoint, "-i", str(data), "-l", "pairs", "--image-dir", "image", "--mask-dir",
            "label", "--processing", "resize", "--input-size", str(SIZE), "--limit", "4", "-o", str(output),
            "--no-report", "--no-progress", *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result, json.loads((output / "metrics.json").read_text())


@pytest.mark.integration
def test_binary_0_255_masks_warn_loudly_and_name_the_fix(tmp_path, ray_session, membrane):
    result, metrics = _score(membrane, tmp_path / "as-is")
    labels = metrics["labels"]
    total = 4 * SIZE * SIZE
    assert labels["label_pixels"] == total and labels["ignore_index"] == 255
    assert labels["ignored_pixels"] > total / 2 and labels["labels_only_0_and_ignored"] == 4
    assert sum(metrics["per_class_support"].values()) == total - labels["ignored_pixels"]
    [warning] = metrics["warnings"]
    assert "--label-values 0,255" in warning and "4 of 4 labels hold only 0 and 255" in warning
    assert result.stderr.count("--label-values 0,255") == 1, result.stderr  # once, on stderr
    assert "--label-values" not in result.stdout
    assert f"ignored pixels {labels['ignored_pixels']} of {total}" in result.stdout

    fixed_result, fixed = _score(membrane, tmp_path / "fixed", "--label-values", "0,255")
    assert fixed["warnings"] == [] and fixed["labels"]["ignored_pixels"] == 0
    assert fixed["per_class_support"]["class_1"] == labels["ignored_pixels"]  # the cells are scored now
    assert "WARNING" not in fixed_result.stderr
