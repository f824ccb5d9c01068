"""The real pipeline on a local Ray, for every layout, from a local folder and from S3 (moto on 127.0.0.1).

Each run's outputs are read back: one Parquet row and one PNG per input, each at its image's size, equal to
the mask an in-process loop over the same model and processing gives; metrics.json's confusion matrix equals
an independent scikit-learn computation over the labels the test itself wrote.
"""

from __future__ import annotations

import io
import json

import factories
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import upload_tree
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from pipeline.config import RunConfig
from pipeline.datasets import LAYOUTS
from pipeline.io import fs
from pipeline.io.outputs import safe_name
from pipeline.models import create_model, load_model
from pipeline.processing import create_processing
from pipeline.run import run

pytestmark = pytest.mark.integration

SIZES = [(72, 64), (64, 80), (96, 72), (64, 64), (80, 88)]  # (W, H): every image its own size
NUM_IMAGES = 5


def _items(case: factories.LayoutCase):
    return [
        (f"img{i:02d}", *factories.make_sample_pair(500 + i, SIZES[i % len(SIZES)], case.binary))
        for i in range(NUM_IMAGES)
    ]


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


def _reference_masks(checkpoint: str, items, case: factories.LayoutCase) -> dict[str, np.ndarray]:
    """The in-process loop: decode, the family's processing, forward, post-process, one image at a time."""
    loaded = load_model("milesial", checkpoint)
    processing = create_processing("upstream", family=loaded.family, num_classes=loaded.module.num_classes,
                                   in_channels=loaded.module.in_channels, scale=1.0)
    masks = {}
    with torch.inference_mode():
        for item_id, image, _ in items:
            prepared = processing.prepare(case.as_stored(image))
            logits = loaded.module(torch.from_numpy(processing.to_network_input(prepared.image[None])))
            masks[item_id] = processing.finish(logits[0].numpy(), prepared.meta)
    return masks


def _expected_confusion(case: factories.LayoutCase, items, masks, num_classes: int) -> np.ndarray:
    total = np.zeros((num_classes, num_classes), np.int64)
    for item_id, _, written in items:
        classes = case.ground_truth(written)
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
    errors = [json.loads(line) for line in storage.read_bytes(fs.join(output,
                                                                      "errors.jsonl")).decode().splitlines()]
    return metrics, parquet_masks, png_masks, errors


def _score_and_check(layout: str, input_uri: str, output: str, checkpoints, items) -> dict:
    case = factories.layout_case(layout)
    num_classes = 2 if case.binary else 4
    checkpoint = checkpoints[(case.in_channels, num_classes)]
    command = "score" if LAYOUTS.get(layout).has_labels else "predict"
    config = RunConfig.create(command=command, input=input_uri, output=output, layout=layout,
                              model="milesial",
                       checkpoint=checkpoint, processing="upstream", scale=1.0, format="both", shard_size=2,
                       batch_size=2, progress=False, report=False)
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


@pytest.mark.parametrize("layout", LAYOUTS.names())
def test_every_layout_from_a_local_folder(layout, tmp_path, ray_session, checkpoints):
    case = factories.layout_case(layout)
    items = _items(case)
    root = case.write(tmp_path / "data", items)
    input_uri = root / case.input_subdir if case.input_subdir else root
    _score_and_check(layout, str(input_uri), str(tmp_path / "out"), checkpoints, items)


@pytest.mark.parametrize("layout", LAYOUTS.names())
def test_every_layout_from_s3(layout, tmp_path, ray_session, s3_server, s3_bucket, checkpoints):
    case = factories.layout_case(layout)
    items = _items(case)
    root = case.write(tmp_path / "data", items)
    uri = upload_tree(root, s3_bucket, "data", s3_server)
    if case.input_subdir:
        uri += f"/{case.input_subdir}"
    _score_and_check(layout, uri, f"s3://{s3_bucket}/runs/{layout}", checkpoints, items)
