"""`bench`: every figure a median of repeats, bare loops and --compare rows before Ray, the CPU named."""

from __future__ import annotations

import statistics

import pytest

from pipeline import cpu_features
from pipeline.backends.variants import parse_variants
from pipeline.bench import bare_loop, bench, compare_rows, format_report, gemm_gflops
from pipeline.config import RunConfig
from pipeline.defaults import DEFAULT_RUN, default_checkpoint, default_dataset
from pipeline.errors import ConfigError


def _config() -> RunConfig:
    return RunConfig.create(**DEFAULT_RUN, input=default_dataset(), checkpoint=default_checkpoint(),
                            output="unused", limit=4, progress=False)


def test_bare_loops_repeat_and_compare_rows_show_accuracy():
    config = _config()
    loop = bare_loop(config, parse_variants("torch:fp32")[0], threads=1, repeats=3)
    assert len(loop.all_seconds) == 3 and loop.seconds == statistics.median(loop.all_seconds)
    assert loop.images == 4 and len(loop.masks) == 4 and loop.miou is not None
    variants = "torch:fp32,onnx:fp32" + (",torch:bf16" if cpu_features.detect().bf16 else "")
    rows = compare_rows(config, list(parse_variants(variants)), threads=1, repeats=3)
    assert [len(r["images_per_second_repeats"]) for r in rows] == [3] * len(rows)
    assert rows[0]["pixels_differing_from_first"] == 0 and rows[0]["miou_change_vs_first"] == 0
    assert rows[1]["pixels_differing_from_first"] <= 2  # onnx fp32: torch's masks (near ties apart)
    for row in rows:
        assert row["pixels_total"] == sum(m.size for m in loop.masks.values())
        assert row["images_per_second"] == pytest.approx(statistics.median(row["images_per_second_repeats"]),
                                                         rel=0.01)
    with pytest.raises(ConfigError, match="--repeats"):
        bench(config, images=4, compare=[], repeats=0)


def test_loops_report_their_arithmetic_throughput_against_the_machines_sgemm():
    """GFLOP/s = the model's FLOPs at each image's network input x images/s (milesial at scale 1 keeps each
    image's size), set against a measured sgemm."""
    from pathlib import Path

    from PIL import Image

    from pipeline.models import load_model
    from pipeline.models.figures import model_figures

    config = _config()
    loop = bare_loop(config, parse_variants("torch:fp32")[0], threads=1, repeats=1)
    loaded = load_model("milesial", default_checkpoint())
    sizes = [Image.open(path).size for path in sorted(Path(default_dataset(), "images").iterdir())[:4]]
    expected = statistics.mean(
        model_figures("milesial", (3, h, w), convention="2mac", **loaded.config)["gflops"] for w, h in sizes)
    assert loop.gflop_per_image == pytest.approx(expected)
    assert loop.gflops == pytest.approx(expected * loop.images_per_second)
    gemm = gemm_gflops(1, size=256, repeats=3)
    assert gemm > 0.5  # any CPU this runs on does more than 0.5 GFLOP/s on one thread
    row = compare_rows(config, list(parse_variants("torch:fp32")), threads=1, repeats=1, gemm=gemm)[0]
    assert row["fraction_of_gemm"] == pytest.approx(row["gflops"] / gemm, abs=1e-3)


@pytest.mark.integration
@pytest.mark.slow  # 4 pipeline passes with actor start-up each: 1-2 minutes on 2 shared cores
def test_bench_reports_medians_the_cpu_and_when_the_loops_ran(ray_session, monkeypatch, tmp_path):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    report = bench(_config(), images=4, compare=list(parse_variants("torch:fp32,onnx:fp32")),
                   memory_check=False, repeats=3)
    assert report["cpu"] == cpu_features.detect().to_json()
    assert report["repeats"] == 3 and len(report["pipeline_images_per_second_repeats"]) == 3
    assert len(report["pipeline_kept_actors_images_per_second_repeats"]) == 3
    assert report["ratio_kept_actors_to_bare_loop"] > 0
    assert report["pipeline_images_per_second"] == statistics.median_low(
        report["pipeline_images_per_second_repeats"])
    assert len(report["bare_loop_images_per_second_repeats"]) == 3
    assert report["ray_running_during_bare_loops"] is True  # this test's session Ray was up: said so
    assert report["pipeline_backend"] == "onnx" and report["backend"] == "auto:fp32 (onnx)"
    assert [row["variant"] for row in report["compare"]] == ["torch:fp32", "onnx:fp32"]
    text = format_report(report)
    assert text.splitlines()[0] == cpu_features.detect().describe()
    assert "median of 3 repeats" in text and "while Ray was running" in text
