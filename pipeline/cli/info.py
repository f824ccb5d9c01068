"""Commands that describe what the pipeline knows: models, layouts, processing modes."""

from __future__ import annotations

import json

import click

from pipeline.sizes import parse_shape


@click.command()
@click.option("--shape", help="Input shape CxHxW for the FLOPs column (default: each model's default size).")
@click.option("--flops", "convention", type=click.Choice(["2mac", "thop2", "seed"]), default="2mac",
              show_default=True, help="FLOPs convention: 2 x MACs, thop 0.1.1 x 2, or the seed table's "
                                      "(thop 0.0.31 x 20/9; see docs/flops.md).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(shape: str | None, convention: str, as_json: bool) -> None:
    """List the registered models: parameters, GFLOPs, default input size and classes.

    \b
    Example:
      unet-pipeline models --shape 3x512x512
      unet-pipeline models --shape 3x512x512 --flops seed
    """
    from pipeline.models import MODELS
    from pipeline.models.figures import model_figures

    rows = []
    requested = parse_shape(shape)
    for name, family in MODELS.items():
        # a model keeps its own input channels (zhixuhao reads grey images); --shape sets the size
        model_shape = None if requested is None else (
            family.default_config.get("in_channels", requested[0]), requested[1], requested[2])
        figures = model_figures(name, model_shape, convention=convention)
        rows.append({
            "name": name, "source": family.source, "backbone": family.backbone,
            "parameters": figures["parameters"], "parameters_m": round(figures["parameters"] / 1e6, 3),
            "gflops": round(figures["gflops"], 3), "flops_convention": figures["convention"],
            "input_shape": list(figures["input_shape"]),
            "default_input_size": list(family.default_input_size),
            "classes": family.default_config.get("num_classes"), "processing": family.default_processing,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = (f"{'name':<22} {'params (M)':>10} {'GFLOPs':>9} {'at shape':>11} {'default size':>12} "
              f"{'classes':>7}  source")
    click.echo(header)
    for r in rows:
        at = "x".join(str(v) for v in r["input_shape"])
        size = "x".join(str(v) for v in r["default_input_size"])
        click.echo(f"{r['name']:<22} {r['parameters_m']:>10.3f} {r['gflops']:>9.3f} {at:>11} {size:>12} "
                   f"{r['classes']:>7}  {r['source']}")
    click.echo(f"GFLOPs: {rows[0]['flops_convention']}; see README 'Models' and docs/flops.md.")


@click.command()
def layouts() -> None:
    """List the dataset layouts `--layout` accepts."""
    from pipeline.datasets import LAYOUTS

    for name, layout in LAYOUTS.items():
        click.echo(f"{name:<11} {layout.description}")


@click.command()
def processings() -> None:
    """List the pre/post-processing modes `--processing` accepts."""
    from pipeline.processing import PROCESSINGS

    for name, mode in PROCESSINGS.items():
        doc = (getattr(mode, "description", None) or (mode.__doc__ or "")).strip().splitlines()
        click.echo(f"{name:<17} {doc[0] if doc else ''}")
