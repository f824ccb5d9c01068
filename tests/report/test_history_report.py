"""The trend report of a run history: self-contained, pictures of the expected size, weakest classes and gate
marks as the history says, and rendered by a real Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from report.html_checks import (
    assert_not_blank,
    distinct_colours,
    embedded_pngs,
    external_references,
    screenshot,
)

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.report.history_report import weakest_classes, write_history_report

CLASSES = ("background", "disc", "square", "triangle", "star", "ring")
TREND_SIZE = (1100, 460)  # 11 x 4.6 inches at 100 dpi


def _record(index: int, miou: float | None, status: str, per_class: dict | None, gate: dict | None) -> dict:
    return {
        "run_id": f"nightly-{index:03d}", "started_at": f"2026-11-{10 + index:02d}T02:00:00+00:00",
        "finished_at": f"2026-11-{10 + index:02d}T02:05:00+00:00", "status": status, "model": "milesial",
        "checkpoint": "s3://models/unet.pth", "checkpoint_sha256": "ab" * 32, "dataset": "s3://data/shapes",
        "layout": "pairs", "miou": miou, "miou_all_classes": miou, "per_class_iou": per_class,
        "images_per_second": 40.0 + index, "num_images": 1000, "num_errors": index % 2,
        "output": f"s3://runs/{index}",
        "metrics_uri": f"s3://runs/{index}/metrics.json", "gate": gate,
    }


def history_records() -> list[dict]:
    """Five nightly runs: a baseline, two passes, a failed gate (disc dropped), one failed before scoring."""
    per_class = [
        {"background": 0.95, "disc": 0.70, "square": 0.60, "triangle": 0.40, "star": 0.50, "ring": None},
        {"background": 0.95, "disc": 0.72, "square": 0.62, "triangle": 0.42, "star": 0.52, "ring": None},
        {"background": 0.96, "disc": 0.74, "square": 0.61, "triangle": 0.45, "star": 0.55, "ring": None},
        {"background": 0.94, "disc": 0.30, "square": 0.58, "triangle": 0.41, "star": 0.50, "ring": 0.2},
    ]
    mious = [0.63, 0.646, 0.662, 0.488]

    def gate(passed: bool, dropped: list[str]) -> dict:
        return {"baseline_run_id": "nightly-000", "baseline_miou": 0.63, "max_drop": 0.02, "passed": passed,
                "dropped_classes": dropped}

    return [
        _record(0, mious[0], "passed", per_class[0], None),
        _record(1, mious[1], "passed", per_class[1], gate(True, [])),
        _record(2, mious[2], "passed", per_class[2], gate(True, [])),
        _record(3, mious[3], "failed", per_class[3], gate(False, ["disc"])),
        {**_record(4, None, "failed", None, None), "images_per_second": None},  # nothing done in it
    ]


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("history")
    path = folder / "history.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in history_records()))
    write_history_report(str(path))
    return folder


def test_history_report_is_written_next_to_the_history(history):
    page = (history / "history.html").read_text()
    markdown = (history / "history.md").read_text()
    assert "5 runs" in page and "2 failed" in page
    linked = re.findall(r"\]\((history_files/[^)]+\.png)\)", markdown)
    assert sorted(linked) == ["history_files/miou-trend.png", "history_files/weakest-classes-trend.png"]
    assert all((history / name).is_file() for name in linked)


def test_every_plot_is_a_decodable_png_of_the_expected_size(history):
    pictures = embedded_pngs((history / "history.html").read_text())
    assert len(pictures) == 2
    for attrs, image, _ in pictures:
        assert image.size == TREND_SIZE, attrs["alt"]
        assert distinct_colours(image) > 20


def test_history_html_references_nothing_outside_itself(history):
    assert external_references((history / "history.html").read_text()) == []


def test_run_table_marks_baseline_failures_and_dropped_classes(history):
    markdown = (history / "history.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| nightly-")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == [
        "nightly-004", "nightly-003", "nightly-002", "nightly-001", "nightly-000 (baseline)"]  # newest first
    failed = rows[1].split(" | ")
    assert (failed[2] == "failed" and failed[3] == "0.4880" and failed[4] == "-0.1740"
            and failed[5] == "-0.1420")
    assert failed[6] == "disc"
    assert rows[0].split(" | ")[-1].strip("| ") == "n/a" and rows[1].split(" | ")[-1].strip("| ") == "43.0"
    assert "gate against baseline" not in markdown.split("## Latest "
                                                         "run")[1].split("##")[0]  # run 4 had no gate


def test_weakest_classes_come_from_the_latest_run_with_class_scores():
    # the last run has no per-class IoU; the one before it ranks ring < disc < triangle < star < square
    assert weakest_classes(history_records(), 3) == ["ring", "disc", "triangle"]
    assert weakest_classes(history_records()[:3], 2) == ["triangle", "star"]  # None (ring) is not ranked


def test_chromium_renders_the_history(history, tmp_path):
    assert_not_blank(screenshot(history / "history.html", tmp_path / "history.png"))


def test_history_command_and_bad_lines(history, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", "--history", str(history / "history.jsonl"), "--out",
                                      str(out),
                                      "--classes", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "history.html").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(history_records()[0]) + "\n{not json\n")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        write_history_report(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no runs"):
        write_history_report(str(empty))
