"""`unet-pipeline bench`: pipeline vs bare loop images/s, and peak memory at 1x and 4x the images."""

from __future__ import annotations

import json
from typing import Any

import click

from pipeline.cli.options import (
    RunCommand,
    build_config,
    data_options,
    execution_options,
    explicit_params,
    model_options,
    processing_options,
)


@click.command(cls=RunCommand, run_command="bench")
@model_options
@data_options
@processing_options
@execution_options
@click.option("--images", type=int, default=200, show_default=True,
              help="Images per measurement (the memory check also runs 4x as many).")
@click.option("--compare", help="Extra bare-loop rows, comma separated: backend:precision[:key=value], "
                                "e.g. torch:fp32:channels_last=0,torch:fp32,onnx:fp32,onnx:int8.")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timed repeats per figure; each images/s is their median.")
@click.option("--memory-check/--no-memory-check", default=True, show_default=True,
              help="Also run 4x the images and compare peak memory.")
@click.option("--scale-test",
              help="Instead: score generated 64x64 images at these dataset sizes (e.g. 4000,32000) "
                                   "and report wall time, images/s, memory, object store and first commit, "
                                   "with the growth ratios.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def bench(ctx: click.Context, images: int, compare: str | None, repeats: int, memory_check: bool,
          scale_test: str | None, as_json: bool, **params: Any) -> None:
    """Measure the pipeline against a bare in-process loop (decode, preprocess, forward, arg-max).

    With no --input: the built-in synthetic dataset (4x --images are generated once and cached) and
    checkpoint.

    \b
    Examples:
      unet-pipeline bench
      unet-pipeline bench --images 200 --compare torch:fp32:channels_last=0,torch:fp32,onnx:fp32,onnx:int8
      unet-pipeline bench -m milesial -c unet_carvana_scale0.5_epoch2.pth -i carvana/ -l carvana --scale 0.5
      unet-pipeline bench --scale-test 4000,32000
    """
    from pipeline.backends.variants import parse_variants
    from pipeline.bench import bench as run_bench
    from pipeline.bench import format_report
    from pipeline.defaults import DEFAULT_RUN, default_checkpoint, default_dataset

    explicit = explicit_params(ctx)
    defaults: dict[str, Any] = {}
    if not params.get("input"):
        defaults = {**DEFAULT_RUN, "input": default_dataset(4 * images if memory_check else images),
                    "checkpoint": params.get("checkpoint") or default_checkpoint()}
    defaults["output"] = "unused-by-bench"  # each pass writes into its own temporary folder
    config = build_config("score" if params.get("layout") != "folder" else "predict", params, explicit,
                          defaults)
    if scale_test:
        from pipeline.bench_scale import format_scale, scale_bench

        sizes = [int(part) for part in scale_test.split(",") if part.strip()]
        report = scale_bench(config, sizes)
        click.echo(json.dumps(report, indent=2) if as_json else format_scale(report))
        return
    variants = list(parse_variants(compare)) if compare else []
    report = run_bench(config, images=images, compare=variants, memory_check=memory_check, repeats=repeats)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
