"""Option bundles shared by the commands, and turning parsed options into a RunConfig.

Every command that runs the pipeline takes the same option names, declared once here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.config import RunConfig, parse_max_errors, parse_size
from pipeline.errors import ConfigError
from pipeline.io.fs import S3Options

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _compose(*decorators: Decorator) -> Decorator:
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


model_options = _compose(
    click.option("--model", "-m", help="Model family (`unet-pipeline models`); inferred from the checkpoint if omitted."),
    click.option("--checkpoint", "-c", help="Weights: local path or s3:// URI (.pth/.pt, .safetensors, Keras .hdf5)."),
    click.option("--num-classes", type=int, help="Override the number of classes (normally read off the weights)."),
    click.option("--in-channels", type=int, help="Override the input channels (normally read off the weights)."),
    click.option("--bilinear/--no-bilinear", default=None, help="milesial: bilinear up-sampling variant."),
    click.option("--base-channels", type=int, help="milesial: width of the first block (upstream 64)."),
    click.option("--conv-bias/--no-conv-bias", default=None, help="milesial: convolutions with bias terms."),
)

processing_options = _compose(
    click.option("--processing", default="upstream", show_default=True,
                 help="Pre/post-processing: upstream (the family's own predict path), milesial-a013c80, "
                      "milesial-21d7850, bubbliiiing, zhixuhao, resize, model-res."),
    click.option("--scale", type=float, help="milesial: input resize factor (upstream default 0.5)."),
    click.option("--input-size", help="Network input size N or HxW (bubbliiiing, zhixuhao, resize, model-res)."),
    click.option("--threshold", type=float, default=0.5, show_default=True,
                 help="Probability threshold for single-channel outputs."),
)

data_options = _compose(
    click.option("--input", "-i", "input_uri", help="Dataset: local folder or s3://bucket/prefix."),
    click.option("--layout", "-l", default="pairs", show_default=True,
                 help="voc, carvana, isbi, pairs, folder, parquet or webdataset (`unet-pipeline layouts`)."),
    click.option("--split", default="val", show_default=True, help="voc: ImageSets/Segmentation/<split>.txt."),
    click.option("--image-dir", help="pairs/carvana/isbi: image folder name under --input."),
    click.option("--mask-dir", help="pairs/carvana/isbi: label folder name under --input."),
    click.option("--mask-suffix", help="pairs/carvana/isbi: label file = <stem><suffix> (e.g. _mask.gif)."),
    click.option("--image-column", help="parquet: column of image bytes."),
    click.option("--mask-column", help="parquet: column of mask bytes."),
    click.option("--id-column", help="parquet: column of ids."),
    click.option("--label-values", help="Raw label value of each class, comma separated (e.g. 0,255)."),
    click.option("--class-names", help="Class names, comma separated, in class-index order."),
    click.option("--limit", type=int, help="Only the first N inputs (file layouts), e.g. for a smoke run."),
    click.option("--max-pixels", type=int, default=100_000_000, show_default=True,
                 help="Larger images are refused as decompression bombs."),
)

output_options = _compose(
    click.option("--output", "-o", "output_uri", help="Output folder: local path or s3://bucket/prefix."),
    click.option("--format", "output_format", type=click.Choice(["parquet", "png", "both"]), default="parquet",
                 show_default=True, help="Masks as Parquet shards, one PNG per image, or both."),
)

execution_options = _compose(
    click.option("--backend", type=click.Choice(["torch", "onnx", "vacc"]), default="torch", show_default=True),
    click.option("--device", default="cpu", show_default=True, help="torch: cpu or cuda."),
    click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True),
    click.option("--batch-size", type=int, default=4, show_default=True, help="Images per forward call."),
    click.option("--shard-size", type=int, default=32, show_default=True,
                 help="Images per shard (the unit of reading, committing and resuming)."),
    click.option("--concurrency", type=int, help="Inference actors (default: as many as the CPUs allow)."),
    click.option("--num-cpus-per-actor", type=float,
                 help="Ray CPUs each inference actor requests (default: CPU backends get one actor per CPU, "
                      "sharing what the tasks leave)."),
    click.option("--threads-per-actor", type=int, help="Intra-op threads per actor (default: its CPUs)."),
    click.option("--calibration", type=click.Choice(["entropy", "percentile", "minmax"]), default="entropy",
                 show_default=True, help="int8: activation range calibration (entropy = KL divergence)."),
    click.option("--calibration-images", type=int, default=32, show_default=True,
                 help="int8: images of the dataset used for calibration (once per job, cached)."),
    click.option("--vacc-model", help="vacc: prefix of the compiled model files (<prefix>.so/.json/.params)."),
    click.option("--actors-per-die", type=int, default=1, show_default=True,
                 help="vacc: inference actors sharing one VACC die."),
    click.option("--max-errors", help="Fail the run above this many bad inputs (count, or fraction like 0.05 or 5%)."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in --output, skipping committed work."),
    click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    click.option("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)."),
    click.option("--s3-region", help="S3 region (default: AWS_REGION)."),
    click.option("--s3-anonymous", is_flag=True, help="Read public buckets without credentials."),
    click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal only)."),
    click.option("--report/--no-report", default=True, show_default=True,
                 help="score: write report.html/report.md (plots, worst images, errors) next to metrics.json."),
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                 help="JSON or YAML file of run settings; command-line options override it."),
)

history_options = _compose(
    click.option("--run-id", help="Write under <output>/<run id>/ (default with --history: UTC time + config hash). "
                                  "Re-running an id replaces that run's outputs and history line."),
    click.option("--history", "history_uri",
                 help="Run history, local or s3:// JSON Lines: one line per run (mIoU, per-class IoU, throughput)."),
)

gate_options = _compose(
    click.option("--baseline", help="Regression gate: a run id in --history, or last-good (latest passed run on the "
                                    "same dataset). The run fails if its mIoU falls more than --max-drop below it."),
    click.option("--max-drop", type=float, default=0.01, show_default=True,
                 help="Largest allowed mIoU drop below --baseline (absolute, e.g. 0.02 = two IoU points)."),
)


def _split_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else None


def load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or use JSON.") from err
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of run settings (e.g. {{\"input\": ..., \"output\": ...}}).")
    return data


_FIELDS = {  # RunConfig field -> click parameter name
    "input": "input_uri", "output": "output_uri", "layout": "layout", "model": "model", "checkpoint": "checkpoint",
    "processing": "processing", "scale": "scale", "input_size": "input_size", "threshold": "threshold",
    "split": "split", "image_dir": "image_dir", "mask_dir": "mask_dir", "mask_suffix": "mask_suffix",
    "image_column": "image_column", "mask_column": "mask_column", "id_column": "id_column",
    "label_values": "label_values", "class_names": "class_names", "limit": "limit", "max_pixels": "max_pixels",
    "format": "output_format", "backend": "backend", "device": "device", "precision": "precision",
    "batch_size": "batch_size", "shard_size": "shard_size", "concurrency": "concurrency",
    "num_cpus_per_actor": "num_cpus_per_actor", "threads_per_actor": "threads_per_actor",
    "calibration": "calibration", "calibration_images": "calibration_images", "vacc_model": "vacc_model",
    "actors_per_die": "actors_per_die",
    "max_errors": "max_errors", "resume": "resume", "ray_address": "address", "progress": "progress",
    "report": "report", "run_id": "run_id", "history": "history_uri", "baseline": "baseline", "max_drop": "max_drop",
}
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "input_size": parse_size,
    "max_errors": parse_max_errors,
    "label_values": lambda text: tuple(int(v) for v in _split_list(text) or ()) or None,
    "class_names": _split_list,
}


def explicit_params(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave (not click defaults)."""
    from click.core import ParameterSource

    return {name for name in ctx.params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def build_config(command: str, params: dict[str, Any], explicit: set[str],
                 defaults: dict[str, Any] | None = None) -> RunConfig:
    """Merge click defaults < built-in defaults < config file < options given on the command line."""
    merged: dict[str, Any] = {"command": command}
    for field_name, param in _FIELDS.items():
        if param in params and params[param] is not None:
            merged[field_name] = _CONVERT.get(field_name, lambda v: v)(params[param])
    merged.update(defaults or {})
    merged.update(load_config_file(params.get("config_file")))
    for field_name, param in _FIELDS.items():
        if param in explicit and params.get(param) is not None:
            merged[field_name] = _CONVERT.get(field_name, lambda v: v)(params[param])
    model_config = {key: params[key] for key in ("num_classes", "in_channels", "bilinear", "base_channels", "conv_bias") if params.get(key) is not None}
    if model_config:
        merged["model_config"] = {**merged.get("model_config", {}), **model_config}
    if not merged.get("resume"):
        merged["resume"] = False
    merged["s3"] = S3Options(params.get("s3_endpoint"), params.get("s3_region"), bool(params.get("s3_anonymous")))
    return RunConfig.from_dict(merged)
