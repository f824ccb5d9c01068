"""The precision table: one dataset scored across models, backends, precisions and input shapes.

Every cell is a real scoring run (`pipeline.run.run`), so its mIoU and images/s are what `score` reports for
that configuration. Rows carry the seed table's columns (model, backbone, source, FLOPs, params, mIoU,
dataset, shape), plus backend, precision, images/s and the mIoU change against the reference row: the first
fp32 variant of the same model and shape (`reference` marks it; its change is 0).

Processing defaults to "model-res" (masks and labels at the network size, the seed table's convention), which
takes an input size for every family, so `shapes` applies to all models. FLOPs use the "seed" convention (the
seed table's own, `pipeline.models.figures`) at each row's shape.

On the built-in dataset (synthetic shapes, 4 classes), a model with one output channel (zhixuhao's
foreground-probability UNet) is scored on the same images with the shapes folded into one foreground class
(`binary_builtin_dataset`); every other model must have 4 output classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backends.variants import BackendVariant
from pipeline.quantize.methods import precision_label, table_calibrations

DEFAULT_VARIANTS = "torch:fp32,onnx:fp16,onnx:int8"
BUILTIN_SHAPES = ((128, 128),)  # the built-in images are 96-160 px: score them near their own scale
BINARY_CLASS_NAMES = ("background", "shape")
COLUMNS = ("model", "backbone", "source", "gflops", "params", "miou", "dataset", "shape", "backend",
           "precision",
           "calibration", "images_per_second", "miou_change", "pixels_differing")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the table: its checkpoint and its own run settings (model_config, label_values, ...)."""

    checkpoint: str
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    """What to score.

    Attributes:
        input: dataset URI ("" = the built-in dataset).
        output: folder for the table files and each run's outputs.
        models: the models (default: the built-in checkpoint).
        variants: backend:precision pairs, in column order; the first fp32 one is the reference.
        shapes: network input sizes (H, W); None = each family's default size.
        run: further RunConfig fields shared by every run (layout, processing, calibration, batch_size, ...).
    """

    input: str
    output: str
    models: tuple[ModelEntry, ...]
    variants: tuple[BackendVariant, ...]
    shapes: tuple[tuple[int, int] | None, ...] = (None,)
    run: dict[str, Any] = field(default_factory=dict)


def binary_builtin_dataset(count: int | None = None) -> str:
    """The built-in dataset with its shape classes folded into one (0 background, 1 shape, 255 void kept).

    Written once next to the built-in dataset and reused; the images are the same files' copies.
    """
    from PIL import Image

    from pipeline.defaults import DEFAULT_COUNT, default_dataset

    source = Path(default_dataset(count or DEFAULT_COUNT))
    root = source.with_name(source.name + "-binary")
    marker = root / ".complete"
    if not marker.exists():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        for image in sorted((source / "images").iterdir()):
            (root / "images" / image.name).write_bytes(image.read_bytes())
            label = np.asarray(Image.open(source / "masks" / image.name))
            folded = np.where(label == 255, 255, (label > 0).astype(np.uint8)).astype(np.uint8)
            Image.fromarray(folded, "L").save(root / "masks" / image.name)
        marker.write_text("ok\n")
    return str(root)


def _dataset_for(spec: TableSpec, entry_settings: dict[str, Any],
                 single_output: bool) -> tuple[str, dict[str, Any]]:
    """(input URI, extra run settings) of one model's runs."""
    from pipeline.defaults import DEFAULT_RUN, default_dataset

    if entry_settings.get("input") or spec.input:
        return entry_settings.get("input") or spec.input, {}
    builtin = {"layout": DEFAULT_RUN["layout"], "class_names": DEFAULT_RUN["class_names"]}
    if single_output:
        return binary_builtin_dataset(), {**builtin, "class_names": BINARY_CLASS_NAMES}
    return default_dataset(), builtin


def _dataset_label(uri: str) -> str:
    from pipeline.cache import cache_dir

    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return f"built-in {name}" if str(cache_dir()) in uri else name


def run_table(spec: TableSpec) -> list[dict[str, Any]]:
    """Score every model x shape x variant; rows in that order, each with its mIoU change against fp32."""
    from pipeline.pool import keep_pool

    rows: list[dict[str, Any]] = []
    with keep_pool():  # the cells of one model and shape share actors; each variant rebuilds the backend
        for index, entry in enumerate(spec.models):
            rows.extend(_model_rows(spec, index, entry))
    return rows


def _model_rows(spec: TableSpec, index: int, entry: ModelEntry) -> list[dict[str, Any]]:
    """The rows of one model: every shape x variant, each with its mIoU change against fp32."""
    from pipeline.models import load_model
    from pipeline.models.figures import model_figures

    rows: list[dict[str, Any]] = []
    settings = dict(entry.settings)
    loaded = load_model(entry.model, entry.checkpoint, **settings.get("model_config", {}))
    family = loaded.family
    single_output = loaded.num_classes == 1
    dataset, dataset_settings = _dataset_for(spec, settings, single_output)
    channels = loaded.in_channels
    for shape in spec.shapes:
        height, width = shape or family.default_input_size
        figures = model_figures(family.name, (channels, height, width), convention="seed",
                                **loaded.config)
        group: list[dict[str, Any]] = []
        for variant in spec.variants:
            for calibration in table_calibrations(variant.precision, spec.run.get("calibration")):
                group.append(_score_cell(spec, index, family.name, entry, settings, dataset,
                                         dataset_settings,
                                         figures, (channels, height, width), variant, calibration))
        reference = next((row for row in group if row["precision"] == "fp32"), None)
        reference_masks = _run_masks(reference["run"]) if reference is not None else {}
        for row in group:
            row["reference"] = row is reference
            if reference is not None and row["miou"] is not None and reference["miou"] is not None:
                row["miou_change"] = row["miou"] - reference["miou"]
            if reference_masks and row is not reference:  # no masks: the runs wrote PNG files only
                row["pixels_differing"], row["pixels"] = _differing(_run_masks(row["run"]),
                                                                    reference_masks)
        rows.extend(group)
    return rows


def _run_masks(output: str) -> dict[str, Any]:
    """id -> (H, W) class mask of a run's Parquet mask shards."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.report.worst import mask_files, read_columns

    masks: dict[str, Any] = {}
    for uri in mask_files(output):
        table = read_columns(uri, ("id", "mask_png"))
        for item_id, png in zip(table.column("id").to_pylist(), table.column("mask_png").to_pylist(),
                                strict=True):
            masks[item_id] = np.asarray(Image.open(io.BytesIO(png)))
    return masks


def _differing(masks: dict[str, Any], reference: dict[str, Any]) -> tuple[int, int]:
    """(pixels whose class differs from the reference row's, pixels compared) over the images both hold."""
    common = sorted(masks.keys() & reference.keys())
    return (sum(int((masks[k] != reference[k]).sum()) for k in common),
            sum(int(reference[k].size) for k in common))


def _score_cell(spec: TableSpec, index: int, model: str, entry: ModelEntry, settings: dict[str, Any],
                dataset: str,
                dataset_settings: dict[str, Any], figures: dict[str, Any], shape: tuple[int, int, int],
                variant: BackendVariant, calibration: str | None) -> dict[str, Any]:
    """One row: a full scoring run of one model x shape x variant (x calibration for int8)."""
    from pipeline.config import RunConfig
    from pipeline.run import run

    channels, height, width = shape
    run_settings = {"processing": "model-res", **dataset_settings, **spec.run, **settings}
    run_settings.pop("input", None)
    if calibration is not None:
        run_settings["calibration"] = calibration
    name = f"{index:02d}-{model}-{height}x{width}-{variant.backend}-{variant.precision}"
    name += f"-{calibration}" if calibration else ""
    config = RunConfig.from_dict({
        **run_settings, "command": "score", "input": dataset, "output": f"{spec.output}/runs/{name}",
        "model": model, "checkpoint": entry.checkpoint, "input_size": (height, width),
        "backend": variant.backend, "precision": variant.precision, "backend_options": variant.options,
        "report": False})
    metrics = run(config).metrics
    about: dict[str, Any] = metrics["model"]
    return {
        "model": about["name"], "backbone": about["backbone"], "source": about["source"],
        "gflops": round(figures["gflops"], 3), "params": figures["parameters"],
        "miou": metrics["miou"], "dataset": _dataset_label(dataset), "shape": f"{channels}x{height}x{width}",
        "backend": variant.backend, "precision": variant.precision, "calibration": calibration,
        "images_per_second": metrics["timings"]["images_per_second"], "miou_change": None,
        "pixels_differing": None, "pixels": None,
        "checkpoint": entry.checkpoint, "num_images": metrics["num_images"],
        "num_errors": metrics["num_errors"],
        "run": config.output.uri,
    }


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    shown = round(100 * value, 2) + 0.0  # + 0.0: no "-0.00" for a change that rounds to nothing
    return f"{shown:+.2f}" if signed else f"{shown:.2f}"


def _pixels(row: dict[str, Any]) -> str:
    if row.get("reference") or row.get("pixels_differing") is None:
        return "-"
    share = row["pixels_differing"] / row["pixels"] if row.get("pixels") else 0.0
    return f"{row['pixels_differing']} ({100 * share:.3f}%)"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown: mIoU in %, its change in percentage points vs the fp32 row ("-" on that row)."""
    header = ("| model | backbone | source | FLOPs (G) | params (M) | mIoU (%) | dataset | shape | backend | "
              "precision | images/s | ΔmIoU vs fp32 (pp) | pixels differing from fp32 |")
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        speed = "n/a" if r["images_per_second"] is None else f"{r['images_per_second']:.2f}"
        lines.append(f"| {r['model']} | {r['backbone']} | {r['source']} | {r['gflops']:.3f} | "
                     f"{r['params'] / 1e6:.3f} | {_percent(r['miou'])} | {r['dataset']} | {r['shape']} | "
                     f"{r['backend']} | {precision_label(r['precision'], r.get('calibration'))} | {speed} | "
                     f"{'-' if r['reference'] else _percent(r['miou_change'], signed=True)} | "
                     f"{_pixels(r)} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], spec: TableSpec) -> tuple[Path, Path]:
    """Write table.md and table.json into spec.output; returns their paths."""
    from pipeline import __version__

    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    markdown, data = out / "table.md", out / "table.json"
    markdown.write_text(to_markdown(rows))
    data.write_text(json.dumps({
        "columns": list(COLUMNS), "rows": rows,
        "variants": [f"{v.backend}:{v.precision}" for v in spec.variants],
        "shapes": [list(s) if s else None for s in spec.shapes], "run": spec.run,
        "version": __version__, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }, indent=2, default=str))
    return markdown, data
