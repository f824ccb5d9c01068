#!/usr/bin/env python3
"""How fast does the pipeline list an S3 dataset, and does the driver's memory stay flat in the key count?

    .venv/bin/python scripts/bench_listing.py                     # 50,000 pairs (10^5 keys), moto server
    .venv/bin/python scripts/bench_listing.py --pairs 5000,50000  # two sizes: memory growth between them
    .venv/bin/python scripts/bench_listing.py --endpoint http://127.0.0.1:9000 --bucket data  # own server

Needs the test extra (moto, boto3) unless --endpoint names a running S3-compatible server (MinIO, ...), whose
credentials come from the environment as for any run. For each size it uploads that many `pairs` inputs (an
image key and a mask key each, a few bytes), then measures in one process, alternating, median of --repeat:

* the server's own listing rate: a bare boto3 `list_objects_v2` loop over both prefixes (keys/s), the ceiling
  any client reaches on that server;
* the pipeline's listing: `pipeline.io.manifest.Listing` of the pairs layout, writing its shard manifests as a
  run does (keys/s, counting the image and the mask keys), and its ratio to the bare loop (the pairs layout
  lists the image prefix, the mask prefix and, per page of masks, the matching image key range once more);
* the listing's peak Python memory (tracemalloc, separate pass), which should not grow with the key count.

moto answers 1,000-2,000 keys/s on 2 cores, far below a real S3 or MinIO: read the ratio, not the rate.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import DataConfig
from pipeline.datasets import LAYOUTS
from pipeline.io.fs import S3Options
from pipeline.io.manifest import Listing

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key-id", "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
               "AWS_REGION": "us-east-1"}


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("bench_listing: the moto server did not start (is the test extra installed?)")


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"))


def upload_pairs(endpoint: str, bucket: str, prefix: str, pairs: int) -> float:
    """`pairs` image/mask key pairs under s3://bucket/prefix/{images,masks}/; returns the seconds it took."""
    s3 = client(endpoint)
    started = time.perf_counter()

    def put(start: int) -> None:
        for i in range(start, min(start + 500, pairs)):
            s3.put_object(Bucket=bucket, Key=f"{prefix}/images/{i:08d}.png", Body=b"i")
            s3.put_object(Bucket=bucket, Key=f"{prefix}/masks/{i:08d}.png", Body=b"m")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(0, pairs, 500)))
    return time.perf_counter() - started


def bare_listing(endpoint: str, bucket: str, prefix: str) -> int:
    """Keys under both prefixes through a bare paginated `list_objects_v2` loop."""
    pages = client(endpoint).get_paginator("list_objects_v2")
    return sum(page.get("KeyCount", 0) for sub in ("images", "masks")
               for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/{sub}/"))


def pipeline_listing(endpoint: str, bucket: str, prefix: str, shard_size: int) -> int:
    """Inputs the pipeline's Listing finds (an image key and a mask key each), manifests written locally."""
    with tempfile.TemporaryDirectory() as run_dir:
        listing = Listing(LAYOUTS.get("pairs"), f"s3://{bucket}/{prefix}", DataConfig(), run_dir, shard_size,
                          S3Options(endpoint_url=endpoint)).start()
        listing.all()
        return listing.inputs


def timed(step, *args) -> tuple[float, int]:
    started = time.perf_counter()
    count = step(*args)
    return time.perf_counter() - started, count


def peak_memory(step, *args) -> int:
    tracemalloc.start()
    try:
        step(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="50000", help="comma-separated sizes, in image/mask pairs")
    parser.add_argument("--endpoint", help="an S3-compatible server to use instead of starting moto")
    parser.add_argument("--bucket", default="bench-listing")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=32)
    args = parser.parse_args()
    sizes = [int(s) for s in args.pairs.split(",")]
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    try:
        s3 = client(endpoint)
        if args.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=args.bucket)
        rows = []
        for pairs in sizes:
            prefix = f"listing-{pairs}"
            upload = upload_pairs(endpoint, args.bucket, prefix, pairs)
            bare, ours = [], []
            for _ in range(args.repeat):  # alternating, so that a busy moment hits both alike
                seconds, keys = timed(bare_listing, endpoint, args.bucket, prefix)
                assert keys == 2 * pairs, f"the bare loop saw {keys} keys, expected {2 * pairs}"
                bare.append(keys / seconds)
                seconds, inputs = timed(pipeline_listing, endpoint, args.bucket, prefix, args.shard_size)
                assert inputs == pairs, f"the pipeline listed {inputs} inputs, expected {pairs}"
                ours.append(2 * pairs / seconds)
            memory = peak_memory(pipeline_listing, endpoint, args.bucket, prefix, args.shard_size)
            rows.append((pairs, upload, statistics.median(bare), statistics.median(ours), memory))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print(f"{'pairs':>8} {'keys':>8} {'upload s':>9} {'bare keys/s':>12} {'pipeline keys/s':>16} "
          f"{'ratio':>6} {'peak MB':>8}")
    for pairs, upload, bare_rate, our_rate, memory in rows:
        print(f"{pairs:>8} {2 * pairs:>8} {upload:>9.1f} {bare_rate:>12.0f} {our_rate:>16.0f} "
              f"{our_rate / bare_rate:>6.2f} {memory / 2**20:>8.1f}")
    if len(rows) > 1:
        print(f"peak memory, largest / smallest size: {rows[-1][4] / rows[0][4]:.2f}x for "
              f"{rows[-1][0] / rows[0][0]:.0f}x the keys")


if __name__ == "__main__":
    main()
