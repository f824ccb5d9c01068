"""What a user reads after a run: the console summary states how the run scored (model, checkpoint,
processing and its parameters, ignored pixels, errors.jsonl), per-class precision and recall, the built-in
default is the explicit command it prints, and a resumed finished run reports nothing done instead of an
absurd speed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import factories
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.options import build_config, explicit_params
from pipeline.cli.run_commands import default_run_settings
from pipeline.config import RunConfig
from pipeline.models import create_model

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("summary")
    factories.write_pairs(root / "data", factories.samples(5, size=(48, 40)))
    (root / "data" / "images" / "s0504.png").write_bytes(b"not a png")  # one input fails
    torch.manual_seed(3)
    checkpoint = root / "tiny.pth"
    torch.save(create_model("milesial", num_classes=4, in_channels=3, base_channels=8, bilinear=False)
               .state_dict(), checkpoint)
    return root / "data", str(checkpoint)


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.integration
def test_the_summary_says_how_the_run_scored_and_a_finished_resume_did_nothing(tmp_path, ray_session,
                                                                              small_run):
    data, checkpoint = small_run
    output = tmp_path / "out"
    args = ["score", "-c", checkpoint, "-i", str(data), "-o", str(output), "--shard-size", "2", *QUIET]
    first = _invoke(args).stdout
    metrics = json.loads((output / "metrics.json").read_text())
    sha = metrics["model"]["checkpoint_sha256"][:12]
    assert f"model milesial   checkpoint {checkpoint} (sha256 {sha}" in first
    assert "processing milesial-a013c80 (scale 0.5)" in first  # the upstream default, stated
    assert f"4 images, 1 errors (each in {output / 'errors.jsonl'})" in first
    labels = metrics["labels"]
    assert f"labels: ignore index 255, ignored pixels {labels['ignored_pixels']} of {4 * 48 * 40}" in first
    assert re.search(r"class\s+IoU\s+precision\s+recall\s+pixels", first), first

    # per-class precision and recall of the summed matrix (against scikit-learn: tests/metrics)
    matrix = np.asarray(metrics["confusion_matrix"])
    for c, name in enumerate(metrics["class_names"]):
        predicted = matrix[:, c].sum()
        assert metrics["per_class_precision"][name] == pytest.approx(matrix[c, c] / predicted if predicted
                                                                     else None)
        assert metrics["per_class_recall"][name] == metrics["per_class_accuracy"][name]

    # the Parquet `confusion` lists carry their shape
    for folder in ("masks", "_run/images"):
        for part in sorted((output / folder).glob("part-*.parquet")):
            schema = pq.read_schema(part)
            assert schema.metadata[b"confusion_shape"] == b"4,4"
            assert all(len(v) == 16 for v in pq.read_table(part, columns=["confusion"]).column(0).to_pylist())

    again = _invoke([*args[:-1], "--report", "--resume"]).stdout
    resumed = json.loads((output / "metrics.json").read_text())
    timings = resumed["timings"]
    assert timings["images_this_attempt"] == 0 and timings["images_before"] == 4
    assert timings["images_per_second"] is None
    assert "nothing left to do" in again and "images/s" not in again
    assert resumed["confusion_matrix"] == metrics["confusion_matrix"]
    report = (output / "report.md").read_text()
    assert "nothing left to do" in report and "| precision | recall |" in report.replace("  ", " ")


def _parse(args: list[str]) -> RunConfig:
    """The RunConfig `unet-pipeline score ARGS` would run, without running it."""
    command = cli.commands["score"]
    with command.make_context("score", list(args)) as ctx:
        explicit = explicit_params(ctx)
        return build_config("score", ctx.params, explicit, default_run_settings(ctx.params, explicit))


def test_the_built_in_default_is_the_run_its_printed_command_names(tmp_path, monkeypatch, capsys):
    import pipeline.defaults

    monkeypatch.setattr(pipeline.defaults, "default_dataset", lambda: str(tmp_path / "shapes"))
    default = _parse(["-o", str(tmp_path / "out")])
    printed = capsys.readouterr().err.split("which is:\n", 1)[1].splitlines()[0]
    explicit = _parse(shlex.split(printed)[2:])
    assert explicit == default
    assert (default.processing.name, default.processing.scale) == ("milesial-a013c80", 1.0)
    readme = (ROOT / "README.md").read_text()
    tail = printed.split(" -i ", 1)[1].split(" ", 1)[1]  # what follows the dataset path
    assert tail.replace(str(tmp_path / "out"), "runs/default") in readme, "the README shows the same run"


@pytest.mark.slow
@pytest.mark.integration
def test_the_built_in_default_is_the_explicit_command_it_prints(tmp_path, ray_session, monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    default = _invoke(["score", "--limit", "6", "-o", str(tmp_path / "default"), *QUIET])
    printed = default.stderr.split("which is:\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(printed)
    assert words[:2] == ["unet-pipeline", "score"]
    options = words[2:]
    options[options.index("-o") + 1] = str(tmp_path / "explicit")
    explicit = _invoke(["score", *options, "--limit", "6", *QUIET])
    a = json.loads((tmp_path / "default" / "metrics.json").read_text())
    b = json.loads((tmp_path / "explicit" / "metrics.json").read_text())
    for key in ("confusion_matrix", "miou", "per_class_iou", "class_names", "processing", "num_images"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["config"].items() if k != "output"} == {
        k: v for k, v in b["config"].items() if k != "output"}
    assert "processing milesial-a013c80 (scale 1.0)" in default.stdout
    assert "processing milesial-a013c80 (scale 1.0)" in explicit.stdout


def test_images_per_second_counts_only_the_images_of_this_attempt():
    from types import SimpleNamespace

    from pipeline.cli.summary import count_lines
    from pipeline.io.commits import PartRecord
    from pipeline.metrics import ConfusionAccumulator
    from pipeline.results import run_metrics

    def part(shard: int, rows: int) -> PartRecord:
        return PartRecord(part=f"p{shard}", shard=shard, rows=tuple(range(rows)), num_ok=rows, num_errors=0,
                          scores=ConfusionAccumulator(2), errors=(), files=(), committed=True)

    family = SimpleNamespace(name="milesial", source="s", backbone="b")
    checkpoint = SimpleNamespace(sha256="0" * 64, metadata={})
    loaded = SimpleNamespace(family=family, config={}, checkpoint=checkpoint)
    config = RunConfig.create(input="in", output="out", checkpoint="c.pth")
    earlier, now = [part(0, 30), part(1, 30)], [part(2, 8)]
    timings = {"pipeline_seconds": 4.0, "wall_seconds": 9.0}
    metrics = run_metrics(config, loaded, "pairs", ("a", "b"), earlier + now, timings, 2, new_parts=now)
    assert metrics["num_images"] == 68 and metrics["timings"]["images_per_second"] == 2.0  # 8 / 4 s
    assert "(2.0 images/s in the pipeline over the 8 images of this attempt; 60 from earlier ones)" in (
        count_lines(metrics, "out")[0])
    finished = run_metrics(config, loaded, "pairs", ("a", "b"), earlier + now, timings, 2, new_parts=[])
    assert finished["timings"]["images_per_second"] is None
    assert "nothing left to do" in count_lines(finished, "out")[0]
