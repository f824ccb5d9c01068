"""A run folder is location-independent: resumed through a symlink, after `cp -a`, after `mv`, or from a
copied S3 prefix, it finishes with the same metrics, and every part committed before is kept, never deleted or
redone.

An interrupted run is made from a finished one by removing the commit records, files and metrics of some parts
(what a kill between parts leaves) and adding an orphan part file (what a kill between writing a part and
committing it leaves): the resume must redo exactly the uncommitted parts and delete exactly the orphan.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import upload_tree
from faults.support import assert_same_results, base_config, clean_reference, read_outputs

from pipeline.io import fs
from pipeline.run import run

pytestmark = pytest.mark.integration
DROP = 2  # parts whose commit is "lost"


def _interrupt(output: Path) -> dict[str, bytes]:
    """Turn a finished run into an interrupted one; returns the kept commit records (name -> bytes)."""
    records = sorted((output / "_run" / "parts").glob("*.json"))
    for record in records[-DROP:]:
        for name in json.loads(record.read_text())["files"]:
            (output / name).unlink()
        record.unlink()
    for name in ("metrics.json", "errors.jsonl"):
        (output / name).unlink()
    (output / "masks" / "part-999999-000001.parquet").write_bytes(b"orphan: written, never committed")
    return {r.name: r.read_bytes() for r in records[:-DROP]}


def _kept_files(output: Path, kept: dict[str, bytes]) -> dict[str, int]:
    """Files named by the kept records -> their inode change stamp (a rewrite would change it)."""
    names = [n for data in kept.values() for n in json.loads(data)["files"]]
    return {n: (output / n).stat().st_mtime_ns for n in names}


def _resume_and_check(reference, resume_at: str, real: Path, kept: dict[str, bytes], stamps: dict[str, int]):
    run(base_config(str(reference.data), resume_at, reference.checkpoint, resume=True))
    outputs = read_outputs(resume_at)
    assert_same_results(outputs, reference.outputs)
    assert not (real / "masks" / "part-999999-000001.parquet").exists(), "the orphan part was left"
    for name, data in kept.items():
        assert (real / "_run" / "parts" / name).read_bytes() == data, f"committed part {name} was redone"
    for name, stamp in stamps.items():
        assert (real / name).stat().st_mtime_ns == stamp, f"committed file {name} was rewritten or deleted"


@pytest.mark.parametrize("how", ["symlink", pytest.param("copy", marks=pytest.mark.slow),
                                 pytest.param("move", marks=pytest.mark.slow)])  # ~6 s each
def test_an_interrupted_run_resumes_wherever_its_folder_is(tmp_path_factory, tmp_path, ray_session, how):
    reference = clean_reference(tmp_path_factory)
    first = tmp_path / "runs" / "real"
    run(base_config(str(reference.data), str(first), reference.checkpoint))
    kept = _interrupt(first)
    if how == "symlink":
        (tmp_path / "runs" / "link").symlink_to(first, target_is_directory=True)
        resume_at, real = str(tmp_path / "runs" / "link"), first
    elif how == "copy":
        real = tmp_path / "elsewhere" / "copy"
        real.parent.mkdir()
        subprocess.run(["cp", "-a", str(first), str(real)], check=True)
        shutil.rmtree(first)  # nothing may still point at the original
        resume_at = str(real)
    else:
        real = tmp_path / "moved"
        first.rename(real)
        resume_at = str(real)
    stamps = _kept_files(real, kept)
    _resume_and_check(reference, resume_at, real, kept, stamps)


def test_an_interrupted_run_resumes_from_a_copied_s3_prefix(tmp_path_factory, tmp_path, ray_session,
                                                            s3_bucket,
                                                              s3_server):
    reference = clean_reference(tmp_path_factory)
    local = tmp_path / "run"
    run(base_config(str(reference.data), str(local), reference.checkpoint))
    kept = _interrupt(local)
    copied = upload_tree(local, s3_bucket, "copied/run", s3_server)  # a prefix copy of the interrupted run
    run(base_config(str(reference.data), copied, reference.checkpoint, resume=True))
    outputs = read_outputs(copied)
    assert_same_results(outputs, reference.outputs)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="copied/run/")["Contents"]}
    assert "copied/run/masks/part-999999-000001.parquet" not in listed, "the orphan part was left"
    for name, data in kept.items():
        key = f"copied/run/_run/parts/{name}"
        assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data, f"{name} was redone"
    assert os.path.isdir(local) and fs.is_s3(copied)
