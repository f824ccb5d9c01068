"""A multi-node cluster: accelerator actors land only where VACC is declared, CPU actors spread over nodes,
and a node lost mid-run (the one holding the inference actor) changes nothing in the results.

The cluster runs in a child process (`cluster_scenario.py`), started once for this module, so it never meets
the pytest session's Ray. About 60-100 s on 2 cores: three nodes, a clean run and a run that loses a node,
whose recovery waits for Ray's health checks to declare the node dead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.demo.synthetic import write_dataset
from pipeline.models import create_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]  # the cluster scenario may take 420 s

SCENARIO = Path(__file__).with_name("cluster_scenario.py")
NUM_IMAGES = 32
SHARD_SIZE = 2


def _varied_checkpoint(path: Path) -> str:
    """A random milesial UNet whose output layer is scaled up, so its masks follow the image content (several
    classes per image), not one class everywhere: a mixed-up or double-counted image changes the metrics."""
    torch.manual_seed(7)
    state = create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                         bilinear=False).state_dict()
    state["outc.conv.weight"] = state["outc.conv.weight"] * 40
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    data = root / "data"
    write_dataset(data, NUM_IMAGES, first_index=100_000)
    settings = {
        "scenarios": ["placement", "node_loss"],
        "clean_output": str(root / "clean"), "faulty_output": str(root / "faulty"), "kill_after_parts": 3,
        "run": {"command": "score", "input": str(data), "checkpoint": _varied_checkpoint(root / "model.pth"),
                "shard_size": SHARD_SIZE, "batch_size": 2, "concurrency": 1, "threads_per_actor": 1,
                "progress": False, "report": False},
    }
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, str(SCENARIO), json.dumps(settings)], env=env,
                              capture_output=True,
                              text=True, timeout=420, start_new_session=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"cluster scenario failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT "):]), settings


def test_vacc_actors_land_only_on_the_vacc_node_and_cpu_actors_spread(cluster_run):
    result, _ = cluster_run
    nodes, placement = result["nodes"], result["placement"]
    vacc_actors = placement["vacc_pool"]
    assert {node for node, _, _ in vacc_actors} == {nodes["vacc"]}, "a VACC actor ran off the VACC node"
    assert len({pid for _, pid, _ in vacc_actors}) == 2 and sum(rows for *_, rows in vacc_actors) == 40
    cpu_actors = placement["cpu_pool"]
    assert sum(rows for *_, rows in cpu_actors) == 40
    # 3 one-CPU actors cannot fit on one 2-CPU node, and the head offers no CPUs: they must span both workers.
    assert {node for node, _, _ in cpu_actors} == {nodes["cpu"], nodes["vacc"]}
    assert nodes["head"] not in {node for node, _, _ in vacc_actors + cpu_actors}


def test_losing_the_inference_actors_node_mid_run_gives_the_clean_runs_metrics(cluster_run):
    result, settings = cluster_run
    loss = result["node_loss"]
    assert "error" not in loss, f"the run did not survive the node loss: {loss['error']}"
    killed = loss["killed"]
    assert killed, "the run finished before a node could be killed"
    total_parts = NUM_IMAGES // SHARD_SIZE
    assert 3 <= killed["parts_committed_before"] < total_parts, "the node was not lost mid-run"
    assert killed["node_id"] in (result["nodes"]["cpu"], result["nodes"]["vacc"])

    clean, faulty = loss["clean"], loss["faulty"]
    assert faulty == clean  # confusion matrix, mIoU, per-class IoU, counts: all exactly equal
    assert faulty["num_images"] == NUM_IMAGES and faulty["num_errors"] == 0
    assert len({i for row in faulty["confusion_matrix"] for i, v in enumerate(row) if v}) >= 3, \
        "the model should predict several classes, or equality would prove little"

    output = Path(settings["faulty_output"])
    ids = [i for part in sorted((output / "masks").glob("*.parquet"))
           for i in pq.read_table(part, columns=["id"]).column("id").to_pylist()]
    expected = sorted(p.stem for p in (Path(settings["run"]["input"]) / "images").iterdir())
    assert sorted(ids) == expected, "every image written exactly once"
    records = [json.loads(p.read_text()) for p in (output / "_run" / "parts").glob("*.json")]
    rows = Counter((r["shard"], row) for r in records for row in r["rows"])
    assert len(rows) == NUM_IMAGES and set(rows.values()) == {1}, "every input committed exactly once"
