"""Intervals and paired comparison of run folders (`pipeline.intervals`, `unet-pipeline compare`), on
constructed runs whose per-image matrices, and so whose true differences, are known. No Ray: the folders are
written as a scoring run writes them (`_run/images/<part>.parquet` in the sink's schema, metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import OutputConfig
from pipeline.errors import InputError
from pipeline.intervals import score_intervals
from pipeline.io.commits import PartRecord
from pipeline.io.outputs import image_stats_name
from pipeline.io.rows import IMAGE_STATS_SCHEMA
from pipeline.metrics import ConfusionAccumulator, scores_from_confusion
from pipeline.metrics.bootstrap import BootstrapSettings, ImageStats, bootstrap_scores

NAMES = ("background", "road", "car", "unused")  # the labels never use class 3
C = len(NAMES)


def matrices_of(n: int = 60, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Images of 3 sequences (ids `sK_NNN`) holding classes 0-2, never class 3."""
    rng = np.random.default_rng(seed)
    m = np.zeros((n, C, C), np.int64)
    m[:, :3, :3] = rng.integers(5, 40, (n, 3, 3))
    m[:, np.arange(3), np.arange(3)] += rng.integers(200, 600, (n, 3))
    return [f"s{i % 3}_{i:03d}" for i in range(n)], m


def corrupt_car(matrices: np.ndarray) -> np.ndarray:
    """A third of every image's car pixels predicted as the unused class: only car's IoU can change (the
    unused class has no IoU in A and 0 in B; roads and background keep every count)."""
    out = matrices.copy()
    moved = out[:, 2, 2] // 3
    out[:, 2, 2] -= moved
    out[:, 2, 3] += moved
    return out


def write_run(output: Path, ids: list[str], matrices: np.ndarray, parts: int = 3) -> list[PartRecord]:
    """A scored run's folder: per-image matrices in `parts` parts, their commit records, metrics.json."""
    records = []
    for k, chunk in enumerate(np.array_split(np.arange(len(ids)), parts)):
        name = f"part-{k:06d}-000001"
        rows = [{"id": ids[i], "shard": k, "row": r, "confusion": matrices[i].ravel().tolist()}
                for r, i in enumerate(chunk)]
        path = output / image_stats_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=IMAGE_STATS_SCHEMA), path)
        scores = ConfusionAccumulator(C)
        for i in chunk:
            scores.add(matrices[i])
        records.append(PartRecord(name, k, tuple(range(len(chunk))), len(chunk), 0, scores, (),
                                  (image_stats_name(name),), True))
    metrics = {"command": "score", **scores_from_confusion(matrices.sum(0), NAMES).to_dict()}
    (output / "metrics.json").write_text(json.dumps(metrics))
    return records


def compare(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["compare", *args, "--json", "--bootstrap", "300"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_score_intervals_cover_the_committed_parts_and_equal_the_bootstrap(tmp_path):
    ids, matrices = matrices_of()
    records = write_run(tmp_path, ids, matrices)
    settings = OutputConfig(uri="x", bootstrap=250, bootstrap_seed=7)
    expected = bootstrap_scores(ImageStats.from_matrices(ids, matrices), BootstrapSettings(250, 7),
                                class_names=NAMES).to_dict()
    assert score_intervals(str(tmp_path), records, matrices.sum(0), NAMES, settings) == {
        **expected, "group_regex": None}
    # a resumed run: the records name the files of every attempt; a part left by no record is not read
    done = [i for i in range(len(ids)) if i < 40]
    partial = score_intervals(str(tmp_path), records[:2], matrices[done].sum(0), NAMES, settings)
    assert partial is not None and partial["images"] == 40
    grouped = score_intervals(str(tmp_path), records, matrices.sum(0), NAMES,
                              OutputConfig(uri="x", bootstrap=250, bootstrap_group=r"^(s\d)_"))
    assert grouped is not None and grouped["groups"] == 3 and grouped["group_regex"] == r"^(s\d)_"
    assert score_intervals(str(tmp_path), records, matrices.sum(0), NAMES,
                           OutputConfig(uri="x", bootstrap=0)) is None
    with pytest.raises(InputError, match="do not add up"):
        score_intervals(str(tmp_path), records, matrices.sum(0) + 1, NAMES, settings)


def test_a_run_compared_with_itself_gives_zero_with_an_interval_holding_zero(tmp_path):
    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    result = compare(str(tmp_path / "a"), str(tmp_path / "a"))
    changes = [*result["scores"].values(), *(c for c in result["per_class_iou"].values())]
    for change in changes:
        if change["a"] is None:  # the unused class has no IoU
            continue
        interval = change["difference"]
        assert interval["estimate"] == 0 and interval["low"] <= 0 <= interval["high"]
        assert not change["changed"]
    assert result["changed_classes"] == [] and result["images"] == len(ids)
    assert all(image["delta"] == 0 for image in result["images_changed_most"])


def test_one_corrupted_class_is_flagged_alone_and_the_images_ranked(tmp_path):
    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    write_run(tmp_path / "b", ids, corrupt_car(matrices), parts=2)  # other part boundaries: paired by id
    result = compare(str(tmp_path / "a"), str(tmp_path / "b"), "--top", "5")
    assert result["changed_classes"] == ["car"]
    car = result["per_class_iou"]["car"]
    truth = (scores_from_confusion(corrupt_car(matrices).sum(0)).per_class_iou[2]
             - scores_from_confusion(matrices.sum(0)).per_class_iou[2])
    assert car["difference"]["estimate"] == pytest.approx(truth)
    assert car["difference"]["high"] < 0 and result["scores"]["miou"]["changed"]
    deltas = [abs(image["delta"]) for image in result["images_changed_most"]]
    assert len(deltas) == 5 and deltas == sorted(deltas, reverse=True) and deltas[0] > 0


def test_same_seed_same_intervals_another_seed_others(tmp_path):
    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    write_run(tmp_path / "b", ids, corrupt_car(matrices))
    first = compare(str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap-seed", "3")
    assert compare(str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap-seed", "3") == first
    other = compare(str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap-seed", "4")
    assert other["scores"]["miou"]["difference"] != first["scores"]["miou"]["difference"]
    grouped = compare(str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap-group", r"^s\d")
    assert grouped["groups"] == 3


def test_runs_over_different_ids_are_refused_naming_them(tmp_path):
    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    write_run(tmp_path / "b", [*ids[:-1], "s9_extra"], matrices)
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "only in A: 's2_059'" in message and "only in B: 's9_extra'" in message


def test_compare_prints_the_differences_and_the_changed_classes(tmp_path):
    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    write_run(tmp_path / "b", ids, corrupt_car(matrices))
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap",
                                      "200"])
    assert result.exit_code == 0, result.output
    assert "classes whose IoU changed beyond their interval: car\n" in result.output
    assert "200 paired resamples of 60 images" in result.output
    line = next(li for li in result.output.splitlines() if li.strip().startswith("car "))
    assert line.endswith("changed")


@pytest.mark.integration
def test_compare_runs_on_s3_as_locally(tmp_path, s3_server, s3_bucket):
    from conftest import upload_tree

    ids, matrices = matrices_of()
    write_run(tmp_path / "a", ids, matrices)
    write_run(tmp_path / "b", ids, corrupt_car(matrices))
    local = compare(str(tmp_path / "a"), str(tmp_path / "b"))
    a = upload_tree(tmp_path / "a", s3_bucket, "runs/a", s3_server)
    b = upload_tree(tmp_path / "b", s3_bucket, "runs/b", s3_server)
    remote = compare(a, b, "--s3-endpoint", s3_server)
    assert remote["a"] == a and remote["b"] == b
    assert {k: v for k, v in remote.items() if k not in ("a", "b")} == {
        k: v for k, v in local.items() if k not in ("a", "b")}
