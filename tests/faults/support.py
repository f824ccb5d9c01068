"""What the fault tests share: a small labelled dataset, its clean run (the reference every faulty run must
equal), and a reader that loads everything a run wrote, locally or on S3."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import factories
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.config import RunConfig
from pipeline.io import fs
from pipeline.models import create_model
from pipeline.run import run

GOOD_COUNT = 10
SHARD_SIZE = 2  # small shards: many parts, so faults land mid-run
ROOT = Path(__file__).resolve().parents[2]  # the repository: Ray workers import tests.faults.* from here


def make_checkpoint(path: Path) -> str:
    """A small milesial UNet (3 -> 4 classes) with fixed random weights."""
    torch.manual_seed(6)
    model = create_model("milesial", num_classes=4, in_channels=3, base_channels=8, bilinear=False)
    torch.save(model.state_dict(), path)
    return str(path)


def good_items():
    """(id, RGB image, class-index label) of the good images, each its own size."""
    return factories.samples(GOOD_COUNT, first=700)


def base_config(input_uri: str, output: str, checkpoint: str, **changes) -> RunConfig:
    """The settings of every fault test (milesial's own processing at scale 1, masks in both formats)."""
    settings = dict(command="score", input=input_uri, output=output, layout="pairs", model="milesial",
                    checkpoint=checkpoint, processing="upstream", scale=1.0, format="both",
                    shard_size=SHARD_SIZE,
                    batch_size=2, progress=False, report=False)
    settings.update(changes)
    return RunConfig.create(**settings)


@dataclass
class Outputs:
    """Everything one run wrote: metrics, error records, Parquet mask rows and PNG masks (by file name)."""

    metrics: dict
    errors: list[dict]
    rows: list[dict]
    pngs: dict[str, np.ndarray]
    files: list[str]

    def masks(self) -> dict[str, np.ndarray]:
        """Parquet masks by id; fails if an id was written twice."""
        out: dict[str, np.ndarray] = {}
        for row in self.rows:
            assert row["id"] not in out, f"{row['id']} written twice to Parquet"
            out[row["id"]] = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
        return out


def all_files(prefix: str) -> list[str]:
    """Every file under `prefix`, recursively (local folder or S3 prefix)."""
    if fs.is_s3(prefix):
        import boto3

        bucket, _, key = prefix[len(fs.S3_SCHEME):].partition("/")
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/")
        return sorted(f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", []))
    return sorted(str(p) for p in Path(prefix).rglob("*") if p.is_file())


def read_outputs(output: str) -> Outputs:
    storage = fs.storage_for(output)
    metrics = json.loads(storage.read_bytes(fs.join(output, "metrics.json")))
    text = storage.read_bytes(fs.join(output, "errors.jsonl")).decode("utf-8")
    errors = [json.loads(line) for line in text.splitlines()]
    rows, pngs = [], {}
    for page in storage.iter_files(fs.join(output, "masks")):
        for uri in page:
            rows.extend(pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist())
    for page in storage.iter_files(fs.join(output, "png")):
        for uri in page:
            pngs[fs.basename(uri)] = np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))))
    return Outputs(metrics, errors, rows, pngs, all_files(output))


SCORE_KEYS = ("confusion_matrix", "miou", "miou_all_classes", "pixel_accuracy", "mean_pixel_accuracy", "dice",
              "per_class_iou", "per_class_accuracy", "per_class_dice", "per_class_support", "num_images",
              "intervals")


def assert_same_results(got: Outputs, reference: Outputs) -> None:
    """Same scores and the same masks, each written once, in Parquet and as PNG."""
    for key in SCORE_KEYS:
        assert got.metrics[key] == reference.metrics[key], key
    assert np.isclose(got.metrics["dice_per_image_mean"], reference.metrics["dice_per_image_mean"],
                      rtol=1e-12)
    got_masks, expected = got.masks(), reference.masks()
    assert sorted(got_masks) == sorted(expected)
    for item_id, mask in expected.items():
        np.testing.assert_array_equal(got_masks[item_id], mask, err_msg=item_id)
    assert sorted(got.pngs) == sorted(reference.pngs)
    for name, mask in reference.pngs.items():
        np.testing.assert_array_equal(got.pngs[name], mask, err_msg=name)


@dataclass(frozen=True)
class Reference:
    data: Path  # the good images, pairs layout
    checkpoint: str
    outputs: Outputs


_REFERENCE: dict[str, Reference] = {}


def clean_reference(tmp_path_factory) -> Reference:
    """The good images scored once, without faults (shared by every test of the session that asks for it)."""
    base = tmp_path_factory.getbasetemp()
    if str(base) not in _REFERENCE:
        folder = base / "faults-reference"
        folder.mkdir()
        data = factories.write_pairs(folder / "data", good_items())
        checkpoint = make_checkpoint(folder / "milesial.pth")
        run(base_config(str(data), str(folder / "out"), checkpoint))
        outputs = read_outputs(str(folder / "out"))
        assert outputs.errors == [] and outputs.metrics["num_images"] == GOOD_COUNT
        _REFERENCE[str(base)] = Reference(data, checkpoint, outputs)
    return _REFERENCE[str(base)]
