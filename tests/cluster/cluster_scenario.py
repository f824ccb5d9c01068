"""A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), driven in its own process.

    python tests/cluster/cluster_scenario.py SETTINGS_JSON   ->   last stdout line: RESULT {json}

It cannot share the pytest process: that one may already hold the session's Ray (`ray_session`), and a process
has one Ray connection. The test starts this script with its own RAY_TMPDIR; every port here is a free one.

Nodes: a head that runs no work (num_cpus=0, like a production head), a CPU node and a node declaring VACC=2.

1. placement: an actor pool asking for the VACC resource the way run.py does for --backend vacc
   (`resource_share(actors_per_die)` units of `VACC` per actor) lands only on the VACC node; a CPU-only pool
   too big for one node spreads over both.
2. node_loss: a scoring run, clean; then the same run where the node holding the inference actor is killed
   mid-run. Ray restarts the actor on the other node and retries the lost work. The test compares the two.

The driver connects through `pipeline.ray_env.ensure_ray`, as a job's driver does, so the run uses the
product's Ray settings.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from pipeline.backends.vacc_dies import resource_share  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.io.outputs import parts_dir  # noqa: E402
from pipeline.ray_env import ensure_ray  # noqa: E402
from pipeline.run import run  # noqa: E402

PREDICTOR_ACTOR = "InferenceActor"  # pipeline.pool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeProbe:
    """A map_batches actor that tags each row with the node and process that handled it. Each batch takes
    0.2 s, so the pool's work is shared by all its actors rather than taken by the first one up."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.2)
        n = len(batch["id"])
        batch["node"] = np.array([ray.get_runtime_context().get_node_id()] * n)
        batch["pid"] = np.full(n, os.getpid())
        return batch


def _probe(pool_size: int, **resources) -> list[list]:
    """[node id, pid, rows] for each actor of a pool with these resources, after 40 rows went through it."""
    dataset = ray.data.range(40, override_num_blocks=10).map_batches(
        NodeProbe, batch_size=4, compute=ray.data.ActorPoolStrategy(size=pool_size), **resources)
    counts = Counter((row["node"], int(row["pid"])) for row in dataset.take_all())
    return [[node, pid, rows] for (node, pid), rows in sorted(counts.items())]


def placement() -> dict:
    return {"vacc_pool": _probe(2, num_cpus=1, resources={"VACC": resource_share(1)}),
            "cpu_pool": _probe(3, num_cpus=1)}


def _actor_node(cluster: Cluster):
    """The worker node holding the live inference actor (public state API, served by the head's dashboard)."""
    from ray.util.state import list_actors

    deadline = time.time() + 30
    while time.time() < deadline:
        actors = list_actors(filters=[("class_name", "=", PREDICTOR_ACTOR), ("state", "=", "ALIVE")])
        for actor in actors:
            for node in cluster.worker_nodes:
                if node.node_id == actor.node_id:
                    return node
        time.sleep(0.2)
    raise RuntimeError("no live inference actor found on a worker node")


def node_loss(cluster: Cluster, settings: dict) -> dict:
    config = RunConfig.from_dict({**settings["run"], "output": settings["clean_output"]})
    started = time.time()
    clean = run(config)
    clean_seconds = round(time.time() - started, 1)
    outcome: dict = {}

    def faulty_run() -> None:
        try:
            outcome["result"] = run(config.replace(output=settings["faulty_output"]))
        except BaseException as err:  # reported to the test, which shows it
            outcome["error"] = f"{type(err).__name__}: {err}"

    worker = threading.Thread(target=faulty_run)
    started = time.time()
    worker.start()
    parts = parts_dir(settings["faulty_output"])
    killed: dict = {}
    while worker.is_alive() and not killed:
        committed = len(os.listdir(parts)) if os.path.isdir(parts) else 0
        if committed >= settings["kill_after_parts"]:
            victim = _actor_node(cluster)
            killed = {"node_id": victim.node_id, "parts_committed_before": len(os.listdir(parts)),
                      "after_seconds": round(time.time() - started, 1)}
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet, object store, workers, actor
        time.sleep(0.05)
    worker.join()
    if "error" in outcome:
        return {"killed": killed, "error": outcome["error"]}
    keys = ("miou", "miou_all_classes", "per_class_iou", "confusion_matrix", "num_inputs", "num_images",
            "num_errors")
    faulty = outcome["result"].metrics
    return {"killed": killed, "clean": {k: clean.metrics[k] for k in keys},
            "faulty": {k: faulty[k] for k in keys}, "seconds": {"clean": clean_seconds,
                                                                 "faulty": round(time.time() - started, 1)}}


def main(settings: dict) -> dict:
    started = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port()})
    try:
        cpu_node = cluster.add_node(num_cpus=2, dashboard_agent_listen_port=free_port(),
                                    metrics_export_port=free_port(), runtime_env_agent_port=free_port())
        vacc_node = cluster.add_node(num_cpus=2, resources={"VACC": 2},
                                     dashboard_agent_listen_port=free_port(),
                                     metrics_export_port=free_port(), runtime_env_agent_port=free_port())
        cluster.wait_for_nodes()
        ensure_ray(cluster.address)
        result = {"nodes": {"head": cluster.head_node.node_id, "cpu": cpu_node.node_id,
                            "vacc": vacc_node.node_id},
                  "startup_seconds": round(time.time() - started, 1)}
        if "placement" in settings["scenarios"]:
            started = time.time()
            result["placement"] = placement()
            result["placement_seconds"] = round(time.time() - started, 1)
        if "node_loss" in settings["scenarios"]:
            result["node_loss"] = node_loss(cluster, settings)
        return result
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
