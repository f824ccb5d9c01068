"""Shared fixtures: one local Ray per test session, a real S3-compatible server (moto) on 127.0.0.1, and small
datasets and checkpoints made by the tests themselves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Before anything imports ray: no token auth for the throwaway clusters, no progress bars, no usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_custom_unit_instance_resources",
                      "neuron_cores,TPU,NPU,HPU,RBLN,FURIOSA,TTNPU,MBLT,VACC")
# Fake credentials for the moto server, set before Ray starts: Ray workers keep the environment they were
# started with, so values set later (by the s3_server fixture) never reach them; the endpoint travels in
# S3Options. The secret and the token are canaries: tests/faults/test_safety.py checks that no output or log
# ever holds them.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "canary-secret-5e1f0b27",
                    "AWS_SESSION_TOKEN": "canary-token-9c4d2a61"}
for _key, _value in FAKE_CREDENTIALS.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parent.parent
# Every test starts from fixed seeds and must leave thread counts, torch flags, the environment, the working
# directory and the Ray session as it found them (tests/isolation.py).
pytest_plugins = ("isolation", "pytester")  # pytester: tests/test_isolation.py


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test of the session (starting one costs ~7 s).

    Always this fixture's own Ray, with the resources and worker path below: a Ray some other code started in
    this process (which tests/isolation.py reports as a leak) is replaced, never reused.
    """
    import ray
    from isolation import restore_session_state, session_state

    from pipeline.ray_env import LOCAL_RAY_ENV, ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    with session_state() as before:  # the driver's PYTHONBREAKPOINT, Ray's for the session
        # The settings the CLI gives the local Ray it starts (above all the idle-worker limit: with Ray's
        # default, idle read/preprocess workers are killed between runs and every run pays their start-up).
        os.environ.update(LOCAL_RAY_ENV)
        # tests/fakes on the workers' path: the fake `vaststreamx` for VACC actors
        # (tests/backends/test_vacc_ray.py).
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 2**20, log_to_driver=False,
                 resources={"VACC": 2},
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "tests" / "fakes")}})
        ensure_ray()
    yield ray
    ray.shutdown()
    restore_session_state(before)


# The S3 server's address and credentials are fixed before any Ray starts, so that Ray workers inherit them
# from the environment exactly as they would on a user's machine (credentials are never passed through the
# pipeline).
S3_PORT = _free_port()
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
          "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_REGION": "us-east-1"}
os.environ.update(S3_ENV)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 in its own process; yields its endpoint URL.

    Credentials and endpoint are in the environment (set at import, above), where users put them, so the code
    under test uses its normal path (s3fs/botocore reading AWS_* variables).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = S3_ENV["AWS_ENDPOINT_URL"]
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", S3_PORT), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("moto server did not start")
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket name on the session's S3 server."""
    import boto3

    name = f"test-{time.time_ns()}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def upload_tree(local: Path, bucket: str, prefix: str, endpoint: str) -> str:
    """Copy a local folder to s3://bucket/prefix and return that URI."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"
