"""`stages.Predictor` called on a hand-built batch dict, without Ray (Ray's pattern: try the UDF on a batch).

Rows of two network shapes are grouped by shape and chunked by the batch size; a row that failed upstream
passes through untouched; a backend that raises fails only the rows of that forward call, as an inference
error; a post-processing error fails only its row.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.backends import BackendSpec
from pipeline.io.rows import pack, unpack
from pipeline.models import MODELS
from pipeline.processing import create_processing
from pipeline.stages import Predictor
from tests.pipeline.fake_backends import expected_mask

BACKEND = "tests.pipeline.fake_backends:RedChannelBackend"
# (id, network image (h, w) or None for a row that failed before inference)
ROWS = [("a0", (8, 12)), ("b0", (10, 6)), ("bad", None), ("a1", (8, 12)), ("a2", (8, 12))]


def _image(index: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _batch(processing) -> dict[str, np.ndarray]:
    """The columns preprocess_batch hands to the actor, one object array per column."""
    columns: dict[str, list] = {key: [] for key in (
        "shard", "row", "id", "source", "label_source", "error_stage", "error_class", "error", "height",
        "width",
        "net", "net_shape", "meta", "label", "label_shape")}
    for index, (item_id, shape) in enumerate(ROWS):
        columns["shard"].append(0)
        columns["row"].append(index)
        columns["id"].append(item_id)
        columns["source"].append(f"/data/{item_id}.png")
        columns["label_source"].append(f"/data/{item_id}_mask.png")
        if shape is None:
            for key, value in (("error_stage", "decode"), ("error_class", "InputError"),
                               ("error", "/data/bad.png: not an image"), ("height", 0), ("width", 0)):
                columns[key].append(value)
            for key in ("net", "net_shape", "meta", "label", "label_shape"):
                columns[key].append(None)
            continue
        net, net_shape = pack(_image(index, shape))
        label, label_shape = pack(np.zeros(shape, np.uint8))
        meta = {"mode": processing.name, "height": shape[0], "width": shape[1], "net_height": shape[0],
                "net_width": shape[1]}
        for key, value in (("error_stage", ""), ("error_class", ""), ("error", ""), ("height", shape[0]),
                           ("width", shape[1]), ("net", net), ("net_shape", net_shape), ("meta",
                                                                                         json.dumps(meta)),
                           ("label", label), ("label_shape", label_shape)):
            columns[key].append(value)
    out = {}
    for key, values in columns.items():
        out[key] = np.empty(len(values), dtype=object)
        out[key][:] = values
    return out


@pytest.fixture
def processing():
    # milesial HEAD at scale 1: the logits are already at the image size, then an arg-max.
    return create_processing("milesial-21d7850", family=MODELS.get("milesial"), num_classes=2, in_channels=3,
                             scale=1.0)


def _predictor(processing, **options) -> Predictor:
    return Predictor(BackendSpec(name=BACKEND, batch_size=2, options=options), processing)


def test_rows_are_grouped_by_shape_chunked_by_batch_size_and_masked(processing):
    predictor = _predictor(processing)
    batch = _batch(processing)
    out = predictor(batch)
    # shape (8, 12): rows a0, a1 then a2 (batch size 2); shape (10, 6): b0; the failed row is never sent
    assert predictor.backend.calls == [(2, 8, 12, 3), (1, 8, 12, 3), (1, 10, 6, 3)]
    assert set(out) >= {"id", "error", "mask", "mask_shape", "label", "label_shape", "height", "width"}
    assert all(len(column) == len(ROWS) for column in out.values())
    for index, (item_id, shape) in enumerate(ROWS):
        for key in ("shard", "row", "id", "source", "label_source", "height", "width", "label",
                    "label_shape"):
            assert out[key][index] == batch[key][index], (item_id, key)
        if shape is None:
            continue
        assert out["error"][index] == "" and out["error_stage"][index] == ""
        mask = unpack(out["mask"][index], out["mask_shape"][index])
        np.testing.assert_array_equal(mask, expected_mask(_image(index, shape)), err_msg=item_id)


def test_a_failed_row_passes_through_untouched(processing):
    out = _predictor(processing)(_batch(processing))
    bad = [item_id for item_id, _ in ROWS].index("bad")
    assert (out["error_stage"][bad], out["error_class"][bad]) == ("decode", "InputError")
    assert out["error"][bad] == "/data/bad.png: not an image"
    assert out["mask"][bad] is None and out["mask_shape"][bad] is None


def test_a_backend_that_raises_fails_only_the_rows_of_that_call(processing):
    out = _predictor(processing, fail_on_height=10)(_batch(processing))
    for index, (item_id, shape) in enumerate(ROWS):
        if shape == (10, 6):
            assert (out["error_stage"][index], out["error_class"][index]) == ("inference", "RuntimeError")
            assert out["error"][index] == f"/data/{item_id}.png: device lost on a batch of 1"
            assert out["mask"][index] is None
        elif shape is not None:
            assert out["error"][index] == "" and out["mask"][index] is not None


def test_a_postprocessing_error_fails_only_its_row(processing):
    batch = _batch(processing)
    meta = json.loads(batch["meta"][3])
    batch["meta"][3] = json.dumps({**meta, "net_height": 9})  # the output no longer fits the meta
    out = _predictor(processing)(batch)
    assert (out["error_stage"][3], out["error_class"][3]) == ("postprocess", "PipelineError")
    assert out["error"][3].startswith("/data/a1.png: Expected this image's network output")
    assert out["mask"][3] is None
    assert [out["error"][i] for i in (0, 1, 4)] == ["", "", ""]
