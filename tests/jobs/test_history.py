"""Run ids, the history file (local and S3) and the regression gate, without running the pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.history import (
    append_history,
    evaluate_gate,
    find_baseline,
    gate_report,
    new_run_id,
    read_history,
    run_output,
    with_run_id,
)

BASE = RunConfig.create(input="/data/val", output="/runs/nightly", checkpoint="/models/unet.pth")


def _record(run_id: str, miou: float | None, status: str = "passed", dataset: str = "/data/val",
            per_class: dict | None = None) -> dict:
    return {"run_id": run_id, "status": status, "dataset": dataset, "layout": "pairs", "miou": miou,
            "per_class_iou": per_class or {}}


def test_run_id_is_utc_time_plus_a_hash_of_what_decides_the_results():
    moment = datetime(2026, 11, 24, 2, 0, 5, tzinfo=UTC)
    run_id = new_run_id(BASE, moment)
    assert run_id == f"20261124T020005Z-{BASE.config_hash()}" and len(BASE.config_hash()) == 8
    # Where the run writes or how it is gated does not change the hash; what it computes does.
    assert BASE.replace(output="s3://b/x", history="h.jsonl",
                        baseline="last-good").config_hash() == BASE.config_hash()
    assert BASE.replace(checkpoint="/models/other.pth").config_hash() != BASE.config_hash()
    for changes_nothing in ({"shard_size": 8}, {"batch_size": 16}, {"concurrency": 3}, {"max_errors": 5}):
        assert BASE.replace(**changes_nothing).config_hash() == BASE.config_hash(), changes_nothing
    for changes_results in ({"calibration": "minmax"}, {"calibration_images": 8}, {"vacc_model": "m/mod"},
                            {"backend_options": {"channels_last": 0}}, {"precision": "fp16"}, {"limit": 3}):
        assert BASE.replace(**changes_results).config_hash() != BASE.config_hash(), changes_results


def test_tracked_runs_write_under_their_run_id():
    assert with_run_id(BASE) is BASE  # untracked: no id, writes to --output as given
    tracked = with_run_id(BASE.replace(history="/runs/history.jsonl"))
    assert (tracked.tracking.run_id.endswith(BASE.config_hash())
            and run_output(tracked) == f"/runs/nightly/{tracked.tracking.run_id}")
    assert run_output(BASE.replace(run_id="nightly-7")) == "/runs/nightly/nightly-7"
    assert run_output(BASE.replace(output="s3://bucket/runs", run_id="r1")) == "s3://bucket/runs/r1"
    with pytest.raises(ConfigError, match="--run-id '../escape'"):
        run_output(BASE.replace(run_id="../escape"))


@pytest.mark.parametrize("changes, message", [
    ({"baseline": "last-good"}, "--baseline needs --history"),
    ({"baseline": "r1", "history": "h.jsonl", "command": "predict"}, "only `score`"),
    ({"max_drop": 1.5}, "--max-drop"),
    ({"max_drop": -0.1}, "--max-drop"),
    ({"gate": "strict"}, "--gate plain or significant"),
    ({"gate": "significant", "bootstrap": 0}, "--gate significant decides with a bootstrap"),
    ({"bootstrap": -1}, "--bootstrap is a number of resamples"),
    ({"bootstrap_group": "(unclosed"}, "--bootstrap-group '\\(unclosed' is not a valid regex"),
])
def test_inconsistent_gate_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        BASE.replace(**changes)


def test_appending_the_same_run_id_replaces_its_line(tmp_path):
    uri = str(tmp_path / "deep" / "history.jsonl")
    assert read_history(uri) == []
    append_history(uri, _record("a", 0.5))
    append_history(uri, _record("b", 0.6))
    append_history(uri, _record("a", 0.7))  # a re-run of a: its line is replaced and moves to the end
    lines = (tmp_path / "deep" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["b", "a"]
    assert read_history(uri)[-1]["miou"] == 0.7


@pytest.mark.integration
def test_history_on_s3_is_rewritten_whole_and_stays_one_line_per_run(s3_bucket):
    uri = f"s3://{s3_bucket}/nightly/history.jsonl"
    for run_id, miou in (("a", 0.5), ("a", 0.55), ("b", 0.6)):
        append_history(uri, _record(run_id, miou))
    assert [(r["run_id"], r["miou"]) for r in read_history(uri)] == [("a", 0.55), ("b", 0.6)]


def test_a_damaged_history_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(_record("a", 0.5)) + "\n\n{not json\n")
    with pytest.raises(PipelineError, match=r"line 3 is not JSON"):
        read_history(str(path))


def test_last_good_is_the_latest_passed_run_of_the_same_dataset():
    history = [_record("r1", 0.50), _record("r2", 0.60), _record("r3", 0.40, status="failed"),
               _record("r4", 0.90, dataset="/data/other"), _record("r5", 0.55)]
    assert find_baseline(history, "last-good", "r6", "/data/val", "pairs", "h")["run_id"] == "r5"
    assert find_baseline(history, "last-good", "r5", "/data/val", "pairs",
                         "h")["run_id"] == "r2"  # not itself
    assert find_baseline(history, "last-good", "x", "/data/new", "pairs",
                         "h") is None  # first run of a dataset
    assert find_baseline(history, "r3", "r6", "/data/val", "pairs",
                         "h")["run_id"] == "r3"  # named: any status
    with pytest.raises(ConfigError, match="--baseline r9 is not in h .*r5"):
        find_baseline(history, "r9", "r6", "/data/val", "pairs", "h")


def test_gate_fails_beyond_max_drop_and_names_the_classes_that_dropped():
    baseline = _record("base", 0.60, per_class={"road": 0.9, "car": 0.6, "sky": 0.3, "tree": None})
    worse = _record("new", 0.52, per_class={"road": 0.88, "car": 0.36, "sky": 0.32, "tree": 0.5})
    gate = evaluate_gate(worse, baseline, max_drop=0.05)
    assert gate["passed"] is False and gate["baseline_run_id"] == "base" and gate["baseline_miou"] == 0.60
    assert [(d["class"], round(d["drop"], 6)) for d in gate["dropped_classes"]] == [("car", 0.24), ("road",
                                                                                                    0.02)]
    assert evaluate_gate(worse, baseline, max_drop=0.08)["passed"] is True  # exactly at the limit: passes
    assert evaluate_gate(worse, baseline, max_drop=0.0799)["passed"] is False
    same = evaluate_gate(baseline, baseline, max_drop=0.0)
    assert same["passed"] is True and same["dropped_classes"] == []
    assert evaluate_gate(_record("empty", None), baseline, 0.5)["passed"] is False  # no mIoU at all


def test_significant_gate_fails_only_when_the_whole_drop_interval_is_above_max_drop():
    baseline = _record("base", 0.60, per_class={"car": 0.6})
    worse = _record("new", 0.55, per_class={"car": 0.5})

    def drop(low: float, high: float) -> dict:
        return {"estimate": 0.05, "low": low, "high": high, "confidence": 0.95, "resamples": 1000}

    noisy = evaluate_gate(worse, baseline, 0.02, "significant", drop(0.01, 0.09))
    assert noisy["passed"] is True and noisy["mode"] == "significant"  # plain would fail: 0.05 > 0.02
    assert evaluate_gate(worse, baseline, 0.02, "plain", drop(0.01, 0.09))["passed"] is False
    regression = evaluate_gate(worse, baseline, 0.02, "significant", drop(0.03, 0.07))
    assert regression["passed"] is False and regression["drop_interval"]["low"] == 0.03
    assert "lies wholly above it" in gate_report(regression, {**worse, "metrics_uri": "m"}, "h")
    fallback = evaluate_gate(worse, baseline, 0.02, "significant", None)  # no interval: the plain rule
    assert fallback["passed"] is False and fallback["mode"] == "plain"
