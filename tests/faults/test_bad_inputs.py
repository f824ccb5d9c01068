"""Every kind of bad input, among good images: each becomes exactly one error record and nothing else changes.

The same dataset is scored from a local folder and from the S3 server. Each run must finish, give the metrics
and masks of the good images alone (the clean reference run), and account for every input: processed + errored
= inputs, with one record per bad input that has the right stage and names the file and the fix.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter

import boto3
import numpy as np
import pytest
from conftest import upload_tree
from faults.bad_inputs import MAX_PIXELS, BadInput, add_bad_inputs, named_file
from faults.support import (
    GOOD_COUNT,
    Outputs,
    assert_same_results,
    base_config,
    clean_reference,
    read_outputs,
)
from PIL import Image

from pipeline.config import RunConfig
from pipeline.models import MODELS
from pipeline.processing import create_processing
from pipeline.results import RunFailed, check_error_limit
from pipeline.run import run
from pipeline.stages import preprocess_batch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_session):
    """(reference run, dataset root with the good images plus every bad input, id -> expected record)."""
    reference = clean_reference(tmp_path_factory)
    root = tmp_path_factory.mktemp("bad-inputs") / "data"
    shutil.copytree(reference.data, root)
    return reference, root, add_bad_inputs(root)


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory):
    """The local folder scored with --max-errors 5, which the bad inputs exceed: outputs, then RunFailed."""
    reference, root, _ = dataset
    output = tmp_path_factory.mktemp("bad-inputs-out") / "out"
    with pytest.raises(RunFailed) as failure:
        run(base_config(str(root), str(output), reference.checkpoint, max_pixels=MAX_PIXELS, max_errors=5))
    return read_outputs(str(output)), str(root), str(failure.value)


@pytest.fixture(scope="module")
def s3_run(dataset, s3_server):
    """Scored from the S3 server into S3, with --max-errors 70% (not exceeded)."""
    reference, root, _ = dataset
    bucket = "bad-inputs"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    uri = upload_tree(root, bucket, "data", s3_server)
    run(base_config(uri, f"s3://{bucket}/out", reference.checkpoint, max_pixels=MAX_PIXELS, max_errors=0.7))
    return read_outputs(f"s3://{bucket}/out"), uri


def _check_accounting(outputs: Outputs, expected: dict[str, BadInput]) -> None:
    metrics = outputs.metrics
    assert metrics["num_inputs"] == GOOD_COUNT + len(expected)
    assert metrics["num_images"] == GOOD_COUNT and metrics["num_errors"] == len(expected)
    assert metrics["num_images"] + metrics["num_errors"] == metrics["num_inputs"]
    assert metrics["errors_by_stage"] == dict(Counter(bad.stage for bad in expected.values()))
    assert len(outputs.errors) == len(expected)


def _check_records(outputs: Outputs, root: str, expected: dict[str, BadInput]) -> None:
    """One record per bad input: its stage, the file it names, a word of the fix (every mismatch listed)."""
    records = Counter(e["id"] for e in outputs.errors)
    assert records == Counter(expected.keys()), "exactly one record per bad input, none for good images"
    problems = []
    for record in outputs.errors:
        bad = expected[record["id"]]
        message = record["error"]
        if record["error_stage"] != bad.stage:
            problems.append(f"{record['id']}: stage {record['error_stage']!r}, expected {bad.stage!r}")
        if named_file(root, record["id"], bad.names) not in message:
            problems.append(f"{record['id']}: message does not name its {bad.names} file: {message}")
        if bad.fix not in message.lower():
            problems.append(f"{record['id']}: message gives no fix ({bad.fix!r}): {message}")
        if not record["error_class"]:
            problems.append(f"{record['id']}: no error class")
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_local_run_equals_the_good_images_alone(dataset, local_run):
    reference, _, expected = dataset
    outputs, root, failure = local_run
    assert_same_results(outputs, reference.outputs)
    _check_accounting(outputs, expected)
    _check_records(outputs, root, expected)
    assert f"{len(expected)} of {GOOD_COUNT + len(expected)} inputs failed" in failure
    assert "--max-errors 5" in failure and "errors.jsonl" in failure


@pytest.mark.integration
def test_s3_run_equals_the_good_images_alone(dataset, s3_run):
    reference, _, expected = dataset
    outputs, root = s3_run
    assert_same_results(outputs, reference.outputs)
    _check_accounting(outputs, expected)
    _check_records(outputs, root, expected)


@pytest.mark.parametrize(("limit", "fails"), [(21, False), (20, True), (21 / 31 + 1e-9, False), (0.6, True),
                                              (None, False)])
def test_max_errors_is_a_count_or_a_fraction(limit, fails):
    config = RunConfig.create(input="in", output="out", checkpoint="c.pth", max_errors=limit)
    if fails:
        with pytest.raises(RunFailed, match=r"21 of 31 inputs failed \(decode: 21\)"):
            check_error_limit(config.execution.max_errors, 31, 21, {"decode": 21})
    else:
        check_error_limit(config.execution.max_errors, 31, 21, {"decode": 21})


def _batch(images: dict[str, bytes]) -> dict[str, np.ndarray]:
    """A source batch (as pipeline.io.source yields it) of unlabelled images."""
    n = len(images)
    columns = {"shard": list(range(n)), "row": [0] * n, "id": list(images),
               "source": [f"/in/{k}" for k in images],
               "label_source": [""] * n, "image": list(images.values()), "label": [None] * n,
               "error_stage": [""] * n, "error_class": [""] * n, "error": [""] * n}
    out = {}
    for key, values in columns.items():
        out[key] = np.empty(n, dtype=object)
        out[key][:] = values
    return out


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_modes_are_converted_where_upstream_converts():
    """bubbliiiing's predict path convert('RGB')s every 8-bit mode; 16-bit greyscale is refused instead.

    16-bit: Pillow's convert clips values above 255 (nearly every pixel of a real 16-bit image turns white),
    so converting would score a different picture; the record says to save the image as 8-bit.
    """
    from pipeline.demo.synthetic import make_sample

    image = make_sample(950)[0]
    processing = create_processing("bubbliiiing", family=MODELS.get("bubbliiiing-vgg16"), num_classes=4,
                                   in_channels=3, input_size=(64, 64))
    converted = {"cmyk": _png(image.convert("CMYK"), "JPEG"), "palette": _png(image.convert("P")),
                 "rgba": _png(image.convert("RGBA")), "grey": _png(image.convert("L")),
                 "grey_alpha": _png(image.convert("LA"))}
    grey16 = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257).astype(np.uint16))
    out = preprocess_batch(_batch({**converted, "grey16": _png(grey16)}), processing=processing,
                           label_rule=None)
    for i, item_id in enumerate(out["id"]):
        if item_id == "grey16":
            assert out["error_stage"][i] == "preprocess" and "/in/grey16" in out["error"][i]
            assert "8-bit" in out["error"][i]
            continue
        assert out["error"][i] == "", out["error"][i]
        decoded = Image.open(io.BytesIO(converted[item_id]))
        expected = processing.prepare(decoded.convert("RGB")).image
        np.testing.assert_array_equal(np.frombuffer(out["net"][i], np.uint8).reshape(expected.shape),
                                      expected,
                                      err_msg=item_id)
