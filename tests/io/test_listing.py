"""Listing that scales: an S3 folder is checked with one request, `--limit N` stops listing after N inputs,
and the first shards are scored while later ones are still being listed."""

from __future__ import annotations

import time

import boto3
import factories
import pytest

from pipeline.config import DataConfig
from pipeline.datasets import LAYOUTS
from pipeline.io import fs
from pipeline.io.manifest import Listing


@pytest.fixture(scope="module")
def pairs_1200(s3_server) -> str:
    """s3://.../data with 1,200 image/mask pairs (more than a listing page), uploaded once for the module."""
    from concurrent.futures import ThreadPoolExecutor

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"listing-{time.time_ns()}"
    client.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"data/images/{i:05d}.png", Body=b"image")
        client.put_object(Bucket=bucket, Key=f"data/masks/{i:05d}.png", Body=b"label")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1200)))
    return f"s3://{bucket}/data"


class _CountingCalls:
    """Counts the S3 API calls an S3Storage makes (a spy: every call still goes to the server)."""

    def __init__(self, storage: fs.S3Storage) -> None:
        self.calls: list[tuple[str, dict]] = []
        self._call = storage._fs._call_s3
        storage._fs._call_s3 = self._spy

    async def _spy(self, method, *args, **kwargs):
        self.calls.append((method, kwargs))
        return await self._call(method, *args, **kwargs)


def test_a_folder_check_is_one_request_however_many_keys(pairs_1200):
    uri = pairs_1200
    storage = fs.storage_for(uri, fs.S3Options().resolved())
    spy = _CountingCalls(storage)
    assert storage.is_dir(f"{uri}/images") and not storage.is_dir(f"{uri}/nothing-here")
    assert [method for method, _ in spy.calls] == ["list_objects_v2", "list_objects_v2"]
    assert all(kwargs["MaxKeys"] == 1 for _, kwargs in spy.calls)


def test_a_limit_stops_the_listing_after_n_inputs(pairs_1200, tmp_path):
    uri = pairs_1200
    s3 = fs.S3Options().resolved()
    spy = _CountingCalls(fs.storage_for(uri, s3))
    shards = Listing(LAYOUTS.get("pairs"), uri, DataConfig(layout="pairs"), str(tmp_path / "out"), 8, s3,
                     limit=20).start().all()
    assert sum(ref.size for ref in shards) == 20
    pages = [kwargs for method, kwargs in spy.calls
             if method == "list_objects_v2" and kwargs.get("MaxKeys", 0) > 1]
    assert len(pages) == 1 and pages[0]["MaxKeys"] == fs.FIRST_PAGE, "more than the first page was listed"


@pytest.mark.integration
def test_the_first_shards_are_scored_while_the_rest_is_listed(ray_session, tmp_path, monkeypatch):
    from pipeline.config import RunConfig
    from pipeline.defaults import default_checkpoint
    from pipeline.pool import keep_pool
    from pipeline.run import run
    from tests.pipeline.slow_listing import SLOW_PAIRS

    monkeypatch.setitem(LAYOUTS._items, SLOW_PAIRS.name, SLOW_PAIRS)

    def score(count: int, name: str) -> dict:
        data = factories.write_pairs(tmp_path / f"data-{name}", factories.samples(count, size=(32, 32)))
        return run(RunConfig.create(input=str(data), output=str(tmp_path / name), layout=SLOW_PAIRS.name,
                                    checkpoint=default_checkpoint(), model="milesial", processing="model-res",
                                    input_size=32, shard_size=4, progress=False, report=False)).metrics

    with keep_pool():  # actors started by a first run: the measure is listing against scoring, not start-up
        score(24, "warm")
        metrics = score(200, "out")
    listed = metrics["timings"]["listing_done_seconds"]
    first_commit = metrics["streaming"]["first_commit_seconds"]
    print(f"listing ended at {listed:.1f} s; first part committed at {first_commit:.1f} s")
    assert metrics["num_images"] == 200
    assert first_commit < listed - 2, "nothing was committed while the listing was still going"
