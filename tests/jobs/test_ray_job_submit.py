"""The scoring job on a real Ray head: `ray job submit --working-dir .` and the Jobs SDK (`jobs/submit.py`).

The head is a separate cluster from the pytest session's Ray (own ports, own RAY_TMPDIR; see ray_head.py) and
is stopped at the end of the module even when a test fails. About 60-70 s on 2 cores: the head, then two jobs,
each starting its own driver, Ray Data actors and torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from constant_models import constant_model, expected_iou
from ray.job_submission import JobStatus, JobSubmissionClient
from ray_head import RayHead

from pipeline.demo.synthetic import CLASS_NAMES, write_dataset
from pipeline.history import append_history, read_history

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    ray_head = RayHead(num_cpus=2)
    try:
        yield ray_head.start()
    finally:
        ray_head.stop()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    return {"root": root, "data": write_dataset(root / "data", 4, first_index=100_000),
            "background": constant_model(root / "background.pth", 0),
            "triangle": constant_model(root / "triangle.pth", 3)}


def _job_args(scene, checkpoint: str, run_id: str, history: str) -> list[str]:
    return ["-c", scene[checkpoint], "-i", str(scene["data"]), "-o", str(scene["root"] / "runs"), "--run-id",
            run_id,
            "--history", history, "--scale", "1", "--class-names", ",".join(CLASS_NAMES), "--no-report"]


def test_ray_job_submit_runs_the_scoring_job_from_the_working_dir(head, scene):
    history = str(scene["root"] / "history.jsonl")
    done = head.run_cli("job", "submit", "--working-dir", ".", "--submission-id", "score-ok", "--",
                        "python", "jobs/score.py", *_job_args(scene, "background", "job-1", history),
                        cwd=str(ROOT))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    client = JobSubmissionClient(head.dashboard_url)
    assert client.get_job_status("score-ok") == JobStatus.SUCCEEDED
    logs = client.get_job_logs("score-ok")
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in logs  # the project came from the uploaded dir
    assert "progress: 0 of 0+ listed inputs committed" in logs
    assert "progress: 4/4 inputs committed (4 images, 0 errors)" in logs
    (record,) = read_history(history)
    assert (f"mIoU {record['miou']:.4f}" in logs
            and "outputs: " + str(scene["root"] / "runs" / "job-1") in logs)
    assert record["status"] == "passed" and record["num_images"] == 4
    assert record["per_class_iou"] == pytest.approx(expected_iou(scene["data"], 0))
    output = scene["root"] / "runs" / "job-1"
    assert (output / "metrics.json").is_file() and len(list((output / "masks").glob("*.parquet"))) == 1


def test_sdk_submitted_job_fails_on_the_regression_gate_and_says_why(head, scene):
    history = str(scene["root"] / "gate-history.jsonl")
    baseline_iou = {"background": 0.8, "disc": 0.5, "square": 0.5, "triangle": 0.5}
    append_history(history, {"run_id": "known-good", "status": "passed", "dataset": str(scene["data"]),
                             "layout": "pairs", "miou": float(np.mean(list(baseline_iou.values()))),
                             "per_class_iou": baseline_iou})
    done = subprocess.run(
        [sys.executable, "jobs/submit.py", "--address", head.dashboard_url, "--submission-id", "score-drop",
         "--",
         *_job_args(scene, "triangle", "job-2", history), "--baseline", "last-good", "--max-drop", "0.05"],
        cwd=str(ROOT), env=head.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    assert "job score-drop: FAILED" in done.stderr
    assert "Regression gate failed for run job-2" in done.stdout and "baseline run known-good" in done.stdout
    assert "Classes that dropped: background 0.8000 ->" in done.stdout and "mIoU" in done.stdout

    client = JobSubmissionClient(head.dashboard_url)
    assert client.get_job_status("score-drop") == JobStatus.FAILED
    last = read_history(history)[-1]
    assert last["run_id"] == "job-2" and last["status"] == "failed" and not last["gate"]["passed"]
