"""No way in through inputs: a checkpoint that carries code is refused before it runs, ids cannot steer output
files out of the output prefix, credentials never reach an output or a log, and a run never writes where it
reads."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import factories
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from click.testing import CliRunner
from conftest import FAKE_CREDENTIALS, upload_tree
from faults.bad_inputs import add_bad_inputs
from faults.support import ROOT, base_config, make_checkpoint, read_outputs
from PIL import Image

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.outputs import safe_name
from pipeline.io.parts import PartSettings, write_parts
from pipeline.io.rows import PREDICTED_COLUMNS, object_column, pack
from pipeline.run import run

NASTY_IDS = [
    "../escape", "../../../../../../tmp/evil", "/etc/passwd", "/abs/dir/x", "a/b/c", "a/../../b", "..", ".",
    ".hidden", "", "nul\x00byte", "名前", "x" * 400, "white space", "%2e%2e%2fencoded", "C:\\Windows\\x",
    "..\\..\\win", "~user", "$HOME", "line\nbreak", "a_b", "a/b",
]


class CodeInPickle:
    """Unpickling this runs code: exec() creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_a_checkpoint_with_code_is_refused_and_never_runs(ray_session, tmp_path, kind):
    # ray_session: a run starts Ray while it loads the checkpoint; this test must not be what starts it
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "model.pth"
    payload = {"inc.double_conv.0.weight": torch.zeros(8, 3, 3, 3), "extra": CodeInPickle(marker)}
    if kind == "torch-zip":
        torch.save(payload, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(payload, protocol=2))
    data = factories.write_pairs(tmp_path / "data", factories.samples(1))
    result = CliRunner().invoke(cli, ["score", "-c", str(checkpoint), "-i", str(data), "-o",
                                      str(tmp_path / "out"),
                                      "--no-progress", "--no-report"])
    assert result.exit_code != 0
    assert "refused without running it" in str(result.exception)
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out").exists(), "nothing was written"


@pytest.mark.parametrize("item_id", NASTY_IDS)
def test_safe_names_stay_in_their_folder(item_id):
    name = safe_name(item_id)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    assert os.path.dirname(os.path.normpath(os.path.join("/out/png", name + ".png"))) == "/out/png"
    assert len(name) <= 140


def test_distinct_ids_get_distinct_names():
    assert len({safe_name(i) for i in NASTY_IDS}) == len(NASTY_IDS)


def _predicted(ids: list[str]) -> dict[str, np.ndarray]:
    """A predicted batch as an inference actor hands it to the part writer: a 4 x 5 mask and label per id."""
    mask, shape = pack(np.arange(20, dtype=np.uint8).reshape(4, 5) % 3)
    rows = [{"shard": 0, "row": i, "id": item_id, "source": f"in#{i}", "label_source": f"in#{i}", "height": 4,
             "width": 5, "mask": mask, "mask_shape": shape, "label": mask, "label_shape": shape,
             "error_stage": "", "error_class": "", "error": ""} for i, item_id in enumerate(ids)]
    return {key: object_column([row[key] for row in rows]) for key in PREDICTED_COLUMNS}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_sink_keeps_every_id_inside_the_output(tmp_path, where, request):
    if where == "s3":
        endpoint = request.getfixturevalue("s3_server")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ids")
        output = "s3://ids/run/out"
    else:
        output = str(tmp_path / "sandbox" / "out")
    settings = PartSettings(output, ("parquet", "png"), 3, True, "milesial", fs.S3Options().resolved())
    (part,) = write_parts(settings, _predicted(NASTY_IDS))

    written = _written_files(output, where, tmp_path)
    assert all(uri.startswith(output + "/") for uri in written), written
    pngs = sorted(fs.basename(uri) for uri in written if "/png/" in uri)
    assert pngs == sorted(safe_name(i) + ".png" for i in NASTY_IDS)
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in part.files)
    table = pq.read_table(io.BytesIO(fs.read_bytes(fs.join(output, part.files[-2]))))  # [..., masks, stats]
    assert table.column("id").to_pylist() == NASTY_IDS, "the ids themselves are kept, unchanged, in Parquet"


def _written_files(output: str, where: str, tmp_path: Path) -> list[str]:
    """Every file the sink wrote; locally, any file anywhere under tmp_path must be under the output."""
    if where == "s3":
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        return [f"s3://ids/{o['Key']}" for o in client.list_objects_v2(Bucket="ids")["Contents"]]
    return [str(p) for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.integration
def test_parquet_ids_cannot_escape_through_a_run(tmp_path, ray_session):
    items = factories.samples(len(NASTY_IDS), first=800)
    root = tmp_path / "data"
    root.mkdir()
    pq.write_table(pa.table({
        "id": NASTY_IDS, "image": [factories.png_bytes(image) for _, image, _ in items],
        "mask": [factories.png_bytes(Image.fromarray(classes, "L")) for _, _, classes in items],
    }), root / "part-0.parquet")
    output = tmp_path / "sandbox" / "out"
    run(base_config(str(root), str(output), make_checkpoint(tmp_path / "m.pth"), layout="parquet",
                    shard_size=32))
    outputs = read_outputs(str(output))
    assert outputs.errors == [] and outputs.metrics["num_images"] == len(NASTY_IDS)
    outside = [p for p in (tmp_path / "sandbox").rglob("*") if p.is_file() and output not in p.parents]
    assert outside == [] and not list(Path("/tmp").glob("evil*"))
    assert sorted(outputs.pngs) == sorted(safe_name(i) + ".png" for i in NASTY_IDS)
    assert sorted(outputs.masks()) == sorted(NASTY_IDS)


@pytest.mark.parametrize(("relation", "where"), [("same", "local"), ("inside", "local"), ("around", "local"),
                                                 ("symlink", "local"), ("inside", "s3"), ("around", "s3")])
def test_a_run_refuses_an_output_that_overlaps_its_input(tmp_path, relation, where):
    base = "s3://bucket/data" if where == "s3" else str(tmp_path / "data")
    output = {"same": base, "inside": base + "/out", "around": base.rsplit("/", 1)[0]}.get(relation)
    if relation == "symlink":
        (tmp_path / "data").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "data")
        output = str(tmp_path / "link" / "runs")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="overlaps --input"):
        run(base_config(base, output, "unused.pth"))
    assert sorted(tmp_path.rglob("*")) == before, "refused before writing anything"


@pytest.mark.integration
@pytest.mark.slow  # ~15 s: a run from S3 with every output and log scanned
def test_credentials_never_reach_outputs_or_logs(tmp_path, ray_session, s3_server):
    """A real `unet-pipeline score`, S3 in and out, bad inputs mixed in, then a run that fails on a missing
    checkpoint. The driver holds one secret key and session token, the session's Ray workers another (tests/
    conftest.py); every object the runs wrote, their stdout and stderr and every log of the Ray session are
    searched for all four."""
    secret, token = f"secret-{uuid.uuid4().hex}", f"token-{uuid.uuid4().hex}"
    canaries = [secret, token, FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                FAKE_CREDENTIALS["AWS_SESSION_TOKEN"]]
    bucket = "credentials"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    data = factories.write_pairs(tmp_path / "data", factories.samples(4, first=850))
    add_bad_inputs(data)
    input_uri = upload_tree(data, bucket, "data", s3_server)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token,
           "AWS_ENDPOINT_URL": s3_server}
    program = str(Path(sys.executable).parent / "unet-pipeline")
    address = ray_session.get_runtime_context().gcs_address
    runs = [
        [program, "score", "-m", "milesial", "-c", make_checkpoint(tmp_path / "m.pth"), "-i", input_uri,
         "-o", f"s3://{bucket}/out", "--scale", "1.0", "--format", "both", "--no-progress", "--max-pixels",
         "50000",
         "--address", address],
        [program, "score", "-c", f"s3://{bucket}/missing.pth", "-i", input_uri, "-o", f"s3://{bucket}/out2"],
    ]
    captured = []
    for command in runs:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
        captured.append((" ".join(command), done.stdout + done.stderr))
    assert b"mIoU" in captured[0][1] and b"errors" in captured[0][1], captured[0][1].decode(errors="replace")
    assert b"missing.pth" in captured[1][1]

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert any(k.endswith("errors.jsonl") for k in keys) and any(k.endswith("report.html") for k in keys)
    captured += [(key, client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # no public API names it
    logs = [p for p in (session / "logs").rglob("*") if p.is_file()]
    assert logs
    captured += [(str(p), p.read_bytes()) for p in logs]
    leaks = [name for name, content in captured for canary in canaries if canary.encode() in content]
    assert leaks == []
