"""Scheduled scoring end to end through the CLI: history lines, the regression gate, re-running a run id.

The models predict one class everywhere (constant_models.py), so the expected IoUs follow from the labels
alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from constant_models import constant_model, expected_iou

from pipeline.cli import main
from pipeline.defaults import default_checkpoint
from pipeline.demo.synthetic import CLASS_NAMES, write_dataset
from pipeline.history import read_history

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    data = write_dataset(root / "data", 6, first_index=100_000)
    return {"root": root, "data": data, "background": constant_model(root / "background.pth", 0),
            "triangle": constant_model(root / "triangle.pth", 3)}


def _score(scene, checkpoint: str, run_id: str, *extra: str) -> int:
    args = ["score", "-c", scene[checkpoint], "-i", str(scene["data"]), "-o", str(scene["root"] / "runs"),
            "--history", str(scene["root"] / "history.jsonl"), "--run-id", run_id, "--scale", "1",
            "--class-names", ",".join(CLASS_NAMES), "--no-report", "--no-progress", *extra]
    try:
        main(args)
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_gate_fails_a_drop_names_the_classes_and_a_rerun_replaces_its_line(scene, ray_session, capsys):
    history_uri = str(scene["root"] / "history.jsonl")

    assert _score(scene, "background", "night-1") == 0
    (good,) = read_history(history_uri)
    expected = expected_iou(scene["data"], 0)
    assert good["status"] == "passed" and good["gate"] is None and good["num_images"] == 6
    assert good["per_class_iou"] == pytest.approx(expected)
    assert good["miou"] == pytest.approx(np.mean([v for v in expected.values() if v is not None]))
    assert good["output"] == str(scene["root"] / "runs" / "night-1") and good["checkpoint_sha256"]
    assert (json.loads((scene["root"] / "runs" / "night-1" / "metrics.json").read_text())["miou"]
            == good["miou"])
    capsys.readouterr()

    assert _score(scene, "triangle", "night-2", "--baseline", "last-good", "--max-drop", "0.05") == 1
    out, err = capsys.readouterr()
    assert "regression gate FAILED" in out and "mIoU" in out  # the run's metrics are shown before the failure
    assert "Regression gate failed for run night-2" in err and "baseline run night-1" in err
    assert "Classes that dropped: background" in err
    bad = read_history(history_uri)[-1]
    assert bad["run_id"] == "night-2" and bad["status"] == "failed"
    assert bad["gate"]["baseline_run_id"] == "night-1" and bad["gate"]["passed"] is False
    assert [d["class"] for d in bad["gate"]["dropped_classes"]] == ["background"]
    assert bad["per_class_iou"] == pytest.approx(expected_iou(scene["data"], 3))

    stale = scene["root"] / "runs" / "night-1" / "masks" / "part-stale.parquet"
    stale.write_bytes(b"from an earlier attempt")
    assert _score(scene, "background", "night-1", "--baseline", "night-2") == 0  # mIoU rose: the gate passes
    assert "regression gate passed" in capsys.readouterr().out
    history = read_history(history_uri)
    assert [r["run_id"] for r in history] == ["night-2", "night-1"]  # one line per run id, the re-run last
    assert history[-1]["gate"]["passed"] is True and history[-1]["gate"]["baseline_run_id"] == "night-2"
    assert history[-1]["miou"] == good["miou"] and not stale.exists()  # the re-run replaced its own outputs


def test_a_run_over_max_errors_is_recorded_as_failed(scene, ray_session, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", 2, first_index=100_000)
    (data / "images" / "broken.png").write_bytes(b"not a png")
    (data / "masks" / "broken.png").write_bytes((data / "masks" / "shape_100000.png").read_bytes())
    history_uri = str(tmp_path / "history.jsonl")
    args = ["score", "-c", scene["background"], "-i", str(data), "-o", str(tmp_path / "runs"), "--history",
            history_uri, "--run-id", "broken-1", "--max-errors", "0", "--scale", "1", "--no-report",
            "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1 and "above --max-errors 0" in capsys.readouterr().err
    (record,) = read_history(history_uri)
    assert record["status"] == "failed" and record["num_errors"] == 1 and record["num_images"] == 2
    assert record["gate"] is None and record["metrics_uri"].endswith("broken-1/metrics.json")


def weakened(path, class_index: int) -> str:
    """The packaged trained checkpoint with one class's output bias pushed down: that class is never
    predicted, a regression the gate must catch."""
    state = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)
    weights = state.get("state_dict", state)
    weights["outc.conv.bias"] = weights["outc.conv.bias"].clone()
    weights["outc.conv.bias"][class_index] -= 50.0
    torch.save(state, path)
    return str(path)


def test_significant_gate_passes_a_rerun_and_fails_a_weakened_checkpoint(scene, ray_session, tmp_path,
                                                                          capsys):
    history_uri = str(tmp_path / "history.jsonl")
    checkpoints = {"trained": default_checkpoint(), "weak": weakened(tmp_path / "weak.pth", 1)}

    def score(name: str, run_id: str, *extra: str) -> int:
        args = ["score", "-c", checkpoints[name], "-i", str(scene["data"]), "-o", str(tmp_path / "runs"),
                "--history", history_uri, "--run-id", run_id, "--scale", "1", "--class-names",
                ",".join(CLASS_NAMES), "--no-report", "--no-progress", "--bootstrap", "400", *extra]
        try:
            main(args)
        except SystemExit as exit_:
            return exit_.code
        return 0

    gate = ("--baseline", "good", "--gate", "significant", "--max-drop", "0.02")
    assert score("trained", "good") == 0
    assert score("trained", "again", *gate) == 0
    again = read_history(history_uri)[-1]
    assert again["gate"]["passed"] and again["gate"]["mode"] == "significant"
    assert again["gate"]["drop_interval"]["estimate"] == 0 and again["gate"]["drop_interval"]["low"] <= 0
    assert again["miou_interval"][0] <= again["miou"] <= again["miou_interval"][1]
    capsys.readouterr()

    assert score("weak", "weak", *gate) == 1
    out, err = capsys.readouterr()
    assert "regression gate FAILED" in out and "(significant)" in out
    assert "lies wholly above it: --gate significant" in err and "disc" in err
    weak = read_history(history_uri)[-1]
    assert weak["status"] == "failed" and weak["gate"]["drop_interval"]["low"] > 0.02
    assert weak["gate"]["dropped_classes"][0]["class"] == "disc"

    main(["report", "--history", history_uri])
    page = (tmp_path / "history.html").read_text()
    assert "Blue band: each run" in page and "mIoU 95% bootstrap interval" in page
    assert "significant gate; mIoU drop" in page
