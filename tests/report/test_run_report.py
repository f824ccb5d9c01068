"""The report of a real scoring run: written by `score` itself, self-contained, rendered by a real Chromium,
and its worst images are the lowest per-image IoUs of the run's Parquet output (read back independently
here)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import factories
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import upload_tree
from report.html_checks import (
    assert_not_blank,
    distinct_colours,
    embedded_pngs,
    external_references,
    screenshot,
)

from pipeline.cli import cli
from pipeline.config import RunConfig
from pipeline.demo.synthetic import CLASS_NAMES
from pipeline.io import fs
from pipeline.models import create_model
from pipeline.report import worst as worst_module
from pipeline.report.run_report import write_report
from pipeline.run import run

pytestmark = pytest.mark.integration

NUM_GOOD = 16
SHARD_SIZE = 4  # several Parquet files, so the worst images are chosen across files
THUMBNAIL = (3 * 160 + 2 * 4,
             160)  # image | ground truth | prediction, each fitted into 160 x 160, 4 px apart
CAPTION = re.compile(r"<figcaption>(\d+)\. (\S+): IoU (\d\.\d{3})")


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, ray_session) -> Path:
    """A `score` run (format both, report on) of 16 good images of their own sizes, one corrupt image and one
    image without a label, by a small random milesial UNet."""
    root = tmp_path_factory.mktemp("report-run")
    items = factories.samples(NUM_GOOD, first=700)
    data = factories.write_pairs(root / "data", items)
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (data / "masks" / "broken.png").write_bytes(factories.png_bytes(factories.palette_png(items[0][2])))
    items[0][1].save(data / "images" / "no_label.png")
    torch.manual_seed(3)
    checkpoint = root / "random.pth"
    torch.save(create_model("milesial", num_classes=4, in_channels=3, base_channels=8,
                            bilinear=False).state_dict(),
               checkpoint)
    output = root / "out"
    run(RunConfig.create(command="score", input=str(data), output=str(output), layout="pairs",
                         model="milesial",
                  checkpoint=str(checkpoint), processing="milesial-a013c80", scale=1.0,
                         class_names=CLASS_NAMES,
                  format="both", shard_size=SHARD_SIZE, batch_size=4, progress=False))
    return output


def parquet_rows(output: Path) -> list[dict]:
    """Every row of the run's mask shards, read whole with pyarrow (not through the report code)."""
    rows = []
    for path in sorted((output / "masks").glob("*.parquet")):
        rows.extend(pq.read_table(path, columns=["id", "iou"]).to_pylist())
    return rows


def lowest(output: Path, count: int) -> list[tuple[str, float]]:
    rows = sorted(parquet_rows(output), key=lambda r: (r["iou"], r["id"]))
    return [(r["id"], r["iou"]) for r in rows[:count]]


def captions(page: str) -> list[tuple[int, str, float]]:
    return [(int(rank), item_id, float(iou)) for rank, item_id, iou in CAPTION.findall(page)]


def test_score_writes_the_report_next_to_metrics(scored_run):
    page = (scored_run / "report.html").read_text()
    markdown = (scored_run / "report.md").read_text()
    assert "Scoring report" in page and "Per-class IoU" in markdown
    linked = re.findall(r"\]\((report_files/[^)]+\.png)\)", markdown)
    assert linked and all((scored_run / name).is_file() for name in linked)
    embedded = sorted(data for _, _, data in embedded_pngs(page))
    assert embedded == sorted((scored_run / name).read_bytes() for name in linked), "HTML and Markdown differ"


def test_every_picture_is_a_decodable_png_of_the_expected_size(scored_run):
    pictures = embedded_pngs((scored_run / "report.html").read_text())
    thumbnails = [image for attrs, image, _ in pictures if re.match(r"\d+\. ", attrs["alt"])]
    assert len(thumbnails) == 12  # the default N, out of 16 scored images
    assert all(image.size == THUMBNAIL for image in thumbnails)
    plots = {attrs["alt"]: image for attrs, image, _ in pictures if not re.match(r"\d+\. ", attrs["alt"])}
    assert {alt: image.size for alt, image in plots.items()} == {
        "Per-class IoU, worst first; the dashed line is the mIoU; error bars: 95% bootstrap intervals.":
            (900, 300),  # 9 x 3 inches at 100 dpi
        "Confusion matrix, row-normalised.": (640, 480),  # (4.8 + 1.6 for the colour bar) x 4.8 inches
        "Class colours of the overlays.": (900, 60),  # one row of 5 swatches
    }
    for alt, image in plots.items():
        assert distinct_colours(image) > 20, f"{alt}: the plot is (nearly) empty"
    for image in thumbnails:
        assert distinct_colours(image) > 100


def test_html_references_nothing_outside_itself(scored_run):
    page = (scored_run / "report.html").read_text()
    assert external_references(page) == []
    assert "<script" not in page and "<link" not in page


def test_worst_images_are_the_lowest_per_image_ious_of_the_parquet_output(scored_run):
    shown = captions((scored_run / "report.html").read_text())
    expected = lowest(scored_run, 12)
    assert [rank for rank, _, _ in shown] == list(range(1, 13))
    assert [item_id for _, item_id, _ in shown] == [item_id for item_id, _ in expected]
    assert [iou for _, _, iou in shown] == [round(iou, 3) for _, iou in expected]
    assert len(parquet_rows(scored_run)) == NUM_GOOD  # the two bad inputs have no row, hence no IoU


def test_worst_choice_reads_only_the_small_columns(scored_run, tmp_path, monkeypatch):
    reads: list[tuple[str, tuple[str, ...]]] = []
    real = worst_module.read_columns

    def recording(uri, columns, s3=None):
        reads.append((fs.basename(uri), tuple(columns)))
        return real(uri, columns, s3)

    monkeypatch.setattr(worst_module, "read_columns", recording)
    write_report(str(scored_run), worst=3, out=str(tmp_path / "r"))
    files = {path.name for path in (scored_run / "masks").glob("*.parquet")}
    chosen = [item_id for item_id, _ in lowest(scored_run, 3)]
    holding = {path.name for path in (scored_run / "masks").glob("*.parquet")
               if set(pq.read_table(path, columns=["id"]).column("id").to_pylist()) & set(chosen)}
    assert {name for name, columns in reads if columns == ("id", "source", "iou")} == files
    mask_reads = [(name, columns) for name, columns in reads if "mask_png" in columns]
    assert {name for name, _ in mask_reads} == holding and len(mask_reads) == len(holding)
    assert len(holding) < len(files)
    shown = captions((tmp_path / "r" / "report.html").read_text())
    assert [item_id for _, item_id, _ in shown] == chosen


def test_errors_are_summarised_by_kind(scored_run):
    markdown = (scored_run / "report.md").read_text()
    section = markdown.split("## Errors", 1)[1]
    assert "2 input(s) failed" in section
    assert re.search(r"\| decode \| InputError \| 1 \|", section)
    assert re.search(r"\| read \| InputError \| 1 \|", section)
    assert "broken" in section and "no_label" in section


def test_chromium_renders_the_report(scored_run, tmp_path):
    assert_not_blank(screenshot(scored_run / "report.html", tmp_path / "report.png"))


def test_a_png_only_run_says_how_to_get_the_worst_images(scored_run, tmp_path):
    copy = tmp_path / "png-only"
    shutil.copytree(scored_run, copy, ignore=shutil.ignore_patterns("masks", "report*"))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["config"]["format"] = "png"
    (copy / "metrics.json").write_text(json.dumps(metrics))
    write_report(str(copy))
    page = (copy / "report.html").read_text()
    assert "--format parquet" in page and "--format both" in page
    assert captions(page) == []
    assert "Confusion matrix" in page


def test_report_of_a_run_on_s3(scored_run, s3_server, s3_bucket):
    uri = upload_tree(scored_run, s3_bucket, "runs/one", s3_server)
    written = write_report(uri, worst=4)
    assert written == f"{uri}/report.html"
    page = fs.read_bytes(written).decode("utf-8")
    assert [item_id for _, item_id, _ in captions(page)] == [item_id for item_id, _ in lowest(scored_run, 4)]
    assert external_references(page) == []
    assert fs.storage_for(uri).exists(f"{uri}/report_files/per-class-iou.png")


def test_report_command(scored_run, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["report", str(scored_run / "metrics.json"), "--out", str(out),
                                      "--worst", "2",
                                      "--confusion-scale", "log"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    assert len(captions((out / "report.html").read_text())) == 2
    neither = CliRunner().invoke(cli, ["report"])
    assert neither.exit_code != 0 and "RUN_URI" in neither.output


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="No metrics.json"):
        write_report(str(tmp_path))


def test_report_option_reaches_the_run_config():
    """`--no-report` turns the report off (the run's own report is covered above)."""
    from pipeline.cli.options import build_config

    params = {"input": "in", "output": "out", "checkpoint": "c.pth", "report": False}
    given = {"input", "output", "checkpoint"}
    assert build_config("score", params, given | {"report"}).output.report is False
    assert build_config("score", {**params, "report": True}, given).output.report is True


def test_score_writes_intervals_prints_them_and_draws_error_bars(scored_run, capsys):
    from pipeline.cli.run_commands import print_summary

    metrics = json.loads((scored_run / "metrics.json").read_text())
    intervals = metrics["intervals"]
    assert intervals["resamples"] == 1000 and intervals["seed"] == 0 and intervals["confidence"] == 0.95
    assert intervals["images"] == intervals["groups"] == NUM_GOOD and intervals["group_regex"] is None
    assert set(intervals["scores"]) == {"miou", "miou_all_classes", "pixel_accuracy", "mean_pixel_accuracy",
                                        "mean_pixel_accuracy_all_classes", "dice"}
    for name, interval in intervals["scores"].items():
        assert interval["estimate"] == pytest.approx(metrics[name])
        assert interval["low"] <= metrics[name] <= interval["high"]
    for name in ("miou", "pixel_accuracy"):  # a random model predicts background: its other scores are fixed
        assert intervals["scores"][name]["low"] < intervals["scores"][name]["high"]
    assert list(intervals["per_class_iou"]) == list(CLASS_NAMES)
    print_summary(metrics, str(scored_run))
    out = capsys.readouterr().out
    miou = intervals["scores"]["miou"]
    assert f"mIoU {metrics['miou']:.4f} [{miou['low']:.2f}, {miou['high']:.2f}]" in out
    assert "95% bootstrap intervals, 1000 resamples of 16 images" in out
    page = (scored_run / "report.html").read_text()
    assert "IoU 95% interval" in page and "percentile bootstrap, 1000 resamples of 16 images" in page


def test_resume_accepts_other_bootstrap_settings_and_covers_every_committed_image(scored_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(scored_run, copy)
    before = json.loads((copy / "metrics.json").read_text())
    config = RunConfig.from_dict(before["config"]).replace(output=str(copy), resume=True, bootstrap=200,
                                                           bootstrap_group=r"^(\D+)", report=False)
    after = run(config).metrics
    assert after["miou"] == before["miou"] and after["intervals"]["resamples"] == 200
    assert after["intervals"]["images"] == NUM_GOOD and after["intervals"]["group_regex"] == r"^(\D+)"
    assert after["intervals"]["groups"] < NUM_GOOD
    off = run(config.replace(bootstrap=0)).metrics
    assert off["intervals"] is None and off["miou"] == before["miou"]


def test_compare_report_shows_the_images_of_a_real_run(scored_run, tmp_path):
    """The report's plumbing on a real run (masks, manifest, sources) against a moved copy of itself; what
    changes and by how much is tested on constructed runs (tests/metrics/test_run_intervals.py)."""
    other = tmp_path / "other"
    shutil.copytree(scored_run, other, ignore=shutil.ignore_patterns("report*"))
    result = CliRunner().invoke(cli, ["compare", str(scored_run), str(other), "--top", "3", "--bootstrap",
                                      "200", "--report", str(tmp_path / "cmp" / "a-vs-b.html")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'cmp' / 'a-vs-b.html'}" in result.output
    page = (tmp_path / "cmp" / "a-vs-b.html").read_text()
    assert (tmp_path / "cmp" / "a-vs-b.md").is_file() and external_references(page) == []
    pictures = embedded_pngs(page)
    strips = [image for attrs, image, _ in pictures if re.match(r"\d+\. ", attrs["alt"])]
    assert len(strips) == 3 and all(image.size == (4 * 160 + 3 * 4, 160) for image in strips)
    assert all(distinct_colours(image) > 100 for image in strips)
    assert "Per-class IoU change B - A with paired 95% intervals." in [a["alt"] for a, _, _ in pictures]
    assert "Classes whose IoU changed beyond their interval: none." in page
