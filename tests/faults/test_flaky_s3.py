"""Transient S3 failures: behind a proxy that answers 503 SlowDown to some requests and drops the connection
of others, a run reading from and writing to S3 completes with the results of a clean run. An object that
stays broken longer than the retries is recorded as a "storage" error and left uncommitted, so `--resume`
retries it."""

from __future__ import annotations

import errno

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import upload_tree
from faults.flaky_proxy import FlakyProxy
from faults.support import (
    GOOD_COUNT,
    assert_same_results,
    base_config,
    clean_reference,
    good_items,
    read_outputs,
)

from pipeline.errors import InputError
from pipeline.io.fs import S3Options
from pipeline.io.source import is_storage_failure
from pipeline.run import run


def _bucket_with_data(name: str, reference, endpoint: str) -> str:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return upload_tree(reference.data, name, "data", endpoint)


@pytest.mark.integration
def test_retried_s3_faults_change_nothing(tmp_path_factory, ray_session, s3_server):
    reference = clean_reference(tmp_path_factory)
    data = _bucket_with_data("flaky", reference, s3_server)
    with FlakyProxy(s3_server, every=12) as proxy:
        run(base_config(data, "s3://flaky/out", reference.checkpoint, s3=S3Options(endpoint_url=proxy.url)))
    assert proxy.injected["503"] >= 3 and proxy.injected["drop"] >= 3, proxy.injected
    outputs = read_outputs("s3://flaky/out")
    assert_same_results(outputs, reference.outputs)
    assert outputs.errors == [] and outputs.metrics["num_inputs"] == GOOD_COUNT


@pytest.mark.integration
@pytest.mark.slow  # ~10 s: an outage outlasting the retries, then a resume
def test_an_outage_longer_than_the_retries_is_retried_by_resume(tmp_path_factory, ray_session, s3_server):
    reference = clean_reference(tmp_path_factory)
    data = _bucket_with_data("outage", reference, s3_server)
    broken = good_items()[3][0]
    with FlakyProxy(s3_server, broken=f"/images/{broken}.png") as proxy:
        config = base_config(data, "s3://outage/out", reference.checkpoint,
                             s3=S3Options(endpoint_url=proxy.url, max_attempts=1))
        run(config)
    outputs = read_outputs("s3://outage/out")
    assert [(e["id"], e["error_stage"]) for e in outputs.errors] == [(broken, "storage")]
    assert outputs.metrics["num_images"] + outputs.metrics["num_errors"] == GOOD_COUNT
    message = outputs.errors[0]["error"]
    assert f"{data}/images/{broken}.png" in message and "--resume" in message, message
    assert "SlowDown" in message or "(503)" in message, message  # a HEAD's 503 has no body to name the code

    run(config.replace(resume=True, s3=S3Options(endpoint_url=s3_server)))  # the outage is over
    outputs = read_outputs("s3://outage/out")
    assert_same_results(outputs, reference.outputs)
    assert outputs.errors == [] and outputs.metrics["num_inputs"] == GOOD_COUNT


def test_storage_failures_are_told_from_bad_files():
    slow_down = ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"},
                             "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    translated = OSError(errno.EBUSY, "reduce your request rate")  # how s3fs re-raises it
    translated.__cause__ = slow_down
    assert is_storage_failure(translated) and is_storage_failure(slow_down)
    assert is_storage_failure(ConnectionResetError()) and is_storage_failure(TimeoutError())
    assert not is_storage_failure(InputError("s3://b/x.png does not exist"))
    assert not is_storage_failure(OSError(errno.EIO, "a local disk error"))
