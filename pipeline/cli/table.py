"""`table`: score one dataset across models, backends, precisions and input shapes; Markdown and JSON out."""

from __future__ import annotations

from typing import Any

import click

from pipeline.api import read_mapping
from pipeline.backends.variants import parse_variants
from pipeline.quantize import CALIBRATION_METHODS
from pipeline.sizes import parse_sizes
from pipeline.table import BUILTIN_SHAPES, DEFAULT_VARIANTS, ModelEntry, TableSpec

SPEC_KEYS = ("input", "output", "models", "variants", "shapes", "run")


def _entries(models: tuple[str, ...], checkpoints: tuple[str, ...], from_file: list[Any]) -> tuple[ModelEntry,
                                                                                                   ...]:
    if checkpoints:
        if models and len(models) != len(checkpoints):
            raise click.UsageError("Give one --model per --checkpoint (in the same order), or none to infer "
                                   f"every model from its file: got {len(models)} --model and "
                                   f"{len(checkpoints)} --checkpoint.")
        names = models or (None,) * len(checkpoints)
        return tuple(ModelEntry(checkpoint, name)
                     for name, checkpoint in zip(names, checkpoints, strict=True))
    if models:
        raise click.UsageError("--model needs a --checkpoint (only the built-in milesial model has one "
                               "packaged).")
    entries = []
    for item in from_file:
        if not isinstance(item, dict) or "checkpoint" not in item:
            raise click.UsageError(f"Each entry of the spec's `models` needs a checkpoint, got {item!r}.")
        settings = {k: v for k, v in item.items() if k not in ("checkpoint", "model")}
        entries.append(ModelEntry(item["checkpoint"], item.get("model"), settings))
    if entries:
        return tuple(entries)
    from pipeline.defaults import default_checkpoint

    return (ModelEntry(default_checkpoint(), "milesial"),)


@click.command()
@click.option("--model", "-m", "models", multiple=True,
              help="Model family of the matching --checkpoint (repeat).")
@click.option("--checkpoint", "-c", "checkpoints", multiple=True,
              help="Checkpoint to score (repeat for several models; default: the built-in one).")
@click.option("--input", "-i", "input_uri", help="Dataset (default: the built-in synthetic dataset).")
@click.option("--layout", "-l", help="Dataset layout of --input (default: pairs).")
@click.option("--variants", help=f"backend:precision pairs, comma separated [default: {DEFAULT_VARIANTS}].")
@click.option("--shapes", help="Network input sizes, comma separated, N or HxW (default: each model's own; "
                               "128 on the built-in dataset).")
@click.option("--processing", help="Processing of every run [default: model-res, scored at network size].")
@click.option("--calibration", type=click.Choice(CALIBRATION_METHODS),
              help="int8 calibration [default: entropy].")
@click.option("--calibration-images", type=int, help="int8: calibration images [default: 32].")
@click.option("--batch-size", type=int, help="Images per forward call [default: 4].")
@click.option("--concurrency", type=int, help="Inference actors per run (default: as the CPUs allow).")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON file with input, output, models [{model, checkpoint, ...}], variants, shapes, "
                   "run.")
@click.option("--out", "-o", "output",
              help="Folder for table.md, table.json and the runs [default: runs/table].")
@click.option("--json", "as_json", is_flag=True, help="Print table.json instead of the Markdown table.")
def table(models: tuple[str, ...], checkpoints: tuple[str, ...], input_uri: str | None, layout: str | None,
          variants: str | None, shapes: str | None, processing: str | None, calibration: str | None,
          calibration_images: int | None, batch_size: int | None, concurrency: int | None,
          spec_file: str | None,
          output: str | None, as_json: bool) -> None:
    """Score one dataset across models, backends, precisions and input shapes, as the seed table does.

    Each cell is a full `score` run. Rows: model, backbone, source, FLOPs, params, mIoU, dataset, shape,
    backend, precision, images/s and the mIoU change against the model's fp32 row. With no --input, the
    built-in synthetic dataset (4 classes; single-output models such as zhixuhao are scored on its
    foreground/background version). Only milesial has a packaged checkpoint: pass one --checkpoint per other
    family.

    \b
    Examples:
      unet-pipeline table unet-pipeline table --variants torch:fp32,onnx:fp16,onnx:int8 --shapes 256,512
      unet-pipeline table -m milesial -c a.pth -m bubbliiiing-vgg16 -c b.pth -m zhixuhao -c c.hdf5 --shapes
      256 unet-pipeline table --spec table.yaml
    """
    from pipeline.table import run_table, to_markdown, write_table

    data = read_mapping(spec_file) if spec_file else {}
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise click.UsageError(f"Unknown keys {unknown} in {spec_file}; valid keys: {', '.join(SPEC_KEYS)}.")
    run_settings = dict(data.get("run") or {})
    for key, value in (("layout", layout), ("processing", processing), ("calibration", calibration),
                       ("calibration_images", calibration_images), ("batch_size", batch_size),
                       ("concurrency", concurrency)):
        if value is not None:
            run_settings[key] = value
    dataset = input_uri or data.get("input") or ""
    shape_text = shapes if shapes is not None else data.get("shapes")
    spec = TableSpec(
        input=dataset,
        output=output or data.get("output") or "runs/table",
        models=_entries(models, checkpoints, list(data.get("models") or [])),
        variants=parse_variants(variants or data.get("variants") or DEFAULT_VARIANTS),
        shapes=parse_sizes(shape_text) if shape_text or dataset else BUILTIN_SHAPES,
        run=run_settings,
    )
    rows = run_table(spec)
    markdown, json_path = write_table(rows, spec)
    click.echo(json_path.read_text() if as_json else to_markdown(rows))
    click.echo(f"wrote {markdown} and {json_path}", err=True)
