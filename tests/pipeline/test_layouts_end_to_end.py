"""The real pipeline on a local Ray, for every layout, from a local folder and from S3 (moto on 127.0.0.1).

Each run's outputs are read back: one Parquet row and one PNG per input, each at its image's size, equal to the
mask an in-process loop over the same model and processing gives; metrics.json's confusion matrix equals an
independent scikit-learn computation over the labels the test itself wrote.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import factories
from conftest import upload_tree
from pipeline.config import RunConfig
from pipeline.io import fs
from pipeline.io.outputs import safe_name
from pipeline.models import create_model, load_model
from pipeline.processing import create_processing
from pipeline.run import run

pytestmark = pytest.mark.integration

SIZES = [(72, 64), (64, 80), (96, 72), (64, 64), (80, 88)]  # (W, H): every image its own size
NUM_IMAGES = 5


@dataclass(frozen=True)
class Case:
    layout: str
    binary: bool  # carvana / isbi hold two classes
    in_channels: int
    run_options: dict


CASES = {
    "pairs": Case("pairs", False, 3, {}),
    "voc": Case("voc", False, 3, {}),
    "carvana": Case("carvana", True, 3, {}),
    "isbi": Case("isbi", True, 1, {}),
    "parquet": Case("parquet", False, 3, {}),
    "webdataset": Case("webdataset", False, 3, {}),
    "folder": Case("folder", False, 3, {}),
}


def _items(case: Case):
    return [
        (f"img{i:02d}", *factories.make_sample_pair(500 + i, SIZES[i % len(SIZES)], case.binary))
        for i in range(NUM_IMAGES)
    ]


def _write(case: Case, root: Path, items) -> Path:
    writer = {
        "pairs": factories.write_pairs, "voc": factories.write_voc, "carvana": factories.write_carvana,
        "isbi": factories.write_isbi, "parquet": factories.write_parquet, "webdataset": factories.write_webdataset,
        "folder": factories.write_folder,
    }[case.layout]
    return writer(root, items)


def _input_uri(case: Case, root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012" if case.layout == "voc" else root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[int, int], str]:
    """Small milesial checkpoints with deterministic weights, per (in_channels, num_classes)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for in_channels, num_classes in ((3, 4), (3, 2), (1, 2)):
        torch.manual_seed(in_channels * 10 + num_classes)
        model = create_model("milesial", in_channels=in_channels, num_classes=num_classes, base_channels=8,
                             bilinear=False)
        path = folder / f"milesial_{in_channels}x{num_classes}.pth"
        torch.save(model.state_dict(), path)
        out[(in_channels, num_classes)] = str(path)
    return out


def _reference_masks(checkpoint: str, items, case: Case) -> dict[str, np.ndarray]:
    """The in-process loop: decode, the family's processing, forward, post-process, one image at a time."""
    loaded = load_model("milesial", checkpoint)
    processing = create_processing("upstream", family=loaded.family, num_classes=loaded.module.num_classes,
                                   in_channels=loaded.module.in_channels, scale=1.0)
    masks = {}
    with torch.inference_mode():
        for item_id, image, _ in items:
            stored = _as_stored(case, image)
            prepared = processing.prepare(stored)
            logits = loaded.module(torch.from_numpy(processing.to_network_input(prepared.image[None])))
            masks[item_id] = processing.finish(logits[0].numpy(), prepared.meta)
    return masks


def _as_stored(case: Case, image: Image.Image) -> Image.Image:
    """The image as the pipeline will decode it from the file the factory wrote (JPEG is lossy)."""
    if case.layout in ("voc", "carvana"):
        return Image.open(io.BytesIO(factories.jpeg_bytes(image))).convert("RGB")
    if case.layout == "isbi":
        return image.convert("L")
    return image


def _ground_truth(case: Case, classes: np.ndarray) -> np.ndarray:
    """The labels as the factory wrote them: carvana and isbi files have no void value (void -> background)."""
    return np.where(classes == 255, 0, classes) if case.layout in ("carvana", "isbi") else classes


def _expected_confusion(case: Case, items, masks, num_classes: int) -> np.ndarray:
    total = np.zeros((num_classes, num_classes), np.int64)
    for item_id, _, written in items:
        classes = _ground_truth(case, written)
        keep = classes != 255
        total += sk_confusion_matrix(classes[keep], masks[item_id][keep], labels=list(range(num_classes)))
    return total


def _read_outputs(output: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray], list]:
    """(metrics or summary, masks from Parquet by id, masks from PNG by file stem, errors)."""
    storage = fs.storage_for(output)
    name = "metrics.json" if storage.exists(fs.join(output, "metrics.json")) else "summary.json"
    metrics = json.loads(storage.read_bytes(fs.join(output, name)))
    parquet_masks, png_masks = {}, {}
    rows = []
    for page in storage.iter_files(fs.join(output, "masks")):
        for uri in page:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
            rows.extend(table.to_pylist())
    for row in rows:
        assert row["id"] not in parquet_masks, f"{row['id']} written twice"
        mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
        assert mask.shape == (row["height"], row["width"])
        parquet_masks[row["id"]] = mask
    for page in storage.iter_files(fs.join(output, "png")):
        for uri in page:
            png_masks[fs.stem(uri)] = np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))))
    errors = [json.loads(line) for line in storage.read_bytes(fs.join(output, "errors.jsonl")).decode().splitlines()]
    return metrics, parquet_masks, png_masks, errors


def _score_and_check(case: Case, data_root: Path, input_uri: str, output: str, checkpoints, items) -> dict:
    num_classes = 2 if case.binary else 4
    checkpoint = checkpoints[(case.in_channels, num_classes)]
    command = "predict" if case.layout == "folder" else "score"
    config = RunConfig.create(command=command, input=input_uri, output=output, layout=case.layout, model="milesial",
                       checkpoint=checkpoint, processing="upstream", scale=1.0, format="both", shard_size=2,
                       batch_size=2, progress=False, report=False, **case.run_options)
    result = run(config)
    metrics, parquet_masks, png_masks, errors = _read_outputs(output)
    assert errors == []
    assert metrics["num_inputs"] == metrics["num_images"] == len(items)
    expected = _reference_masks(checkpoint, items, case)
    assert sorted(parquet_masks) == sorted(expected)
    assert sorted(png_masks) == sorted(safe_name(i) for i in expected)
    for item_id, mask in expected.items():
        width, height = next(image.size for i, image, _ in items if i == item_id)
        assert mask.shape == (height, width)
        np.testing.assert_array_equal(parquet_masks[item_id], mask, err_msg=f"{item_id} (Parquet)")
        np.testing.assert_array_equal(png_masks[safe_name(item_id)], mask, err_msg=f"{item_id} (PNG)")
    if command == "score":
        np.testing.assert_array_equal(np.asarray(metrics["confusion_matrix"]),
                                      _expected_confusion(case, items, expected, num_classes))
        assert result.miou == metrics["miou"]
    return metrics


@pytest.mark.parametrize("layout", sorted(CASES))
def test_every_layout_from_a_local_folder(layout, tmp_path, ray_session, checkpoints):
    case = CASES[layout]
    items = _items(case)
    root = _write(case, tmp_path / "data", items)
    _score_and_check(case, root, str(_input_uri(case, root)), str(tmp_path / "out"), checkpoints, items)


@pytest.mark.parametrize("layout", sorted(CASES))
def test_every_layout_from_s3(layout, tmp_path, ray_session, s3_server, s3_bucket, checkpoints):
    case = CASES[layout]
    items = _items(case)
    root = _write(case, tmp_path / "data", items)
    uri = upload_tree(root, s3_bucket, "data", s3_server)
    if case.layout == "voc":
        uri += "/VOCdevkit/VOC2012"
    _score_and_check(case, root, uri, f"s3://{s3_bucket}/runs/{layout}", checkpoints, items)
