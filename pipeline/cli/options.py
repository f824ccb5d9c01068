"""The run options, generated from `RunConfig`'s fields, and turning parsed options into a `RunConfig`.

Every option's help text and default come from the configuration field it sets (`pipeline.config`), and the
choices of `--backend`, `--precision` and `--calibration` from their registries, so nothing is spelled twice.
The click parameter of an option is named after its flat configuration key (`input`, `batch_size`, ...).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.config import FORMATS, PNG_VALUES, RunConfig
from pipeline.errors import ConfigError
from pipeline.io.fs import S3Options

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
MODEL_OVERRIDES = ("num_classes", "in_channels", "bilinear", "base_channels", "conv_bias")
"""Options that override what the checkpoint says about the model (RunConfig.model.overrides)."""


def compose(*decorators: Decorator) -> Decorator:
    """One decorator applying `decorators` in reading order (the first is the first option in --help)."""
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


def config_option(key: str, *flags: str, **kwargs: Any) -> Decorator:
    """A click option for the flat configuration key `key`: help and default from its field.

    `flags` default to `--<key with dashes>`; other keyword arguments go to `click.option` (type, is_flag,
    ...).
    """
    where = RunConfig.keys()[key]
    f = where.field
    default = f.default if f.default is not dataclasses.MISSING else None
    kwargs.setdefault("help", f.metadata["help"])
    if default is not None and "default" not in kwargs:
        kwargs["default"] = default
        kwargs.setdefault("show_default", True)
    return click.option(*(flags or (f"--{key.replace('_', '-')}",)), key, **kwargs)


def _names(registry: Any) -> str:
    return ", ".join(registry.names())


def _precisions() -> list[str]:
    from pipeline.backends import BACKENDS

    seen: dict[str, None] = {}
    for _, entry in BACKENDS.items():
        seen.update(dict.fromkeys(entry.precisions))
    return list(seen)


def _model_options() -> Decorator:
    # Model and processing names are listed by `unet-pipeline models|processings`: their registries import
    # torch, which the CLI does not load before a command needs it.
    return compose(
        config_option("model", "--model", "-m"),
        config_option("checkpoint", "--checkpoint", "-c"),
        click.option("--num-classes", type=int,
                     help="Override the number of classes (normally read off the weights)."),
        click.option("--in-channels", type=int,
                     help="Override the input channels (normally read off the weights)."),
        click.option("--bilinear/--no-bilinear", default=None,
                     help="milesial: bilinear up-sampling variant."),
        click.option("--base-channels", type=int, help="milesial: width of the first block (upstream 64)."),
        click.option("--conv-bias/--no-conv-bias", default=None,
                     help="milesial: convolutions with bias terms."),
    )


def _processing_options() -> Decorator:
    return compose(
        config_option("processing"),
        config_option("scale", type=float),
        config_option("input_size"),
        config_option("threshold", type=float),
    )


def _data_options() -> Decorator:
    from pipeline.datasets import LAYOUTS

    return compose(
        config_option("input", "--input", "-i"),
        config_option("layout", "--layout", "-l",
                      help=f"Dataset layout: {_names(LAYOUTS)} (`unet-pipeline layouts`)."),
        config_option("split"),
        config_option("image_dir"),
        config_option("mask_dir"),
        config_option("mask_suffix"),
        config_option("image_column"),
        config_option("mask_column"),
        config_option("id_column"),
        config_option("label_values"),
        config_option("ignore_index"),
        config_option("label_map"),
        config_option("class_names"),
        config_option("limit", type=int),
        config_option("max_pixels", type=int),
    )


def _output_options() -> Decorator:
    return compose(
        config_option("output", "--output", "-o"),
        config_option("format", type=click.Choice(FORMATS)),
        config_option("png_values", type=click.Choice(PNG_VALUES)),
    )


def _execution_options() -> Decorator:
    from pipeline.backends import BACKENDS
    from pipeline.quantize import CALIBRATION_METHODS

    return compose(
        config_option("backend", type=click.Choice(BACKENDS.names()),
                      help="Inference backend: " + "; ".join(f"{n}: {e.description}" for n,
                                                             e in BACKENDS.items())),
        config_option("device"),
        config_option("precision", type=click.Choice(_precisions())),
        config_option("batch_size", type=int),
        config_option("shard_size", type=int),
        config_option("concurrency", type=int),
        config_option("num_cpus_per_actor", type=float),
        config_option("threads_per_actor", type=int),
        config_option("calibration", type=click.Choice(CALIBRATION_METHODS)),
        config_option("calibration_images", type=int),
        config_option("vacc_model"),
        config_option("actors_per_die", type=int),
        config_option("max_errors"),
        config_option("resume", is_flag=True, default=False, show_default=False),
        config_option("ray_address", "--address"),
        click.option("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)."),
        click.option("--s3-region", help="S3 region (default: AWS_REGION)."),
        click.option("--s3-anonymous", is_flag=True, help="Read public buckets without credentials."),
        config_option("progress", "--progress/--no-progress", default=None),
        config_option("report", "--report/--no-report"),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="JSON or YAML file of run settings (the long option names as keys, '_' for '-'); "
                          "command-line options override it."),
    )


def _history_options() -> Decorator:
    return compose(config_option("run_id"), config_option("history"))


def _gate_options() -> Decorator:
    from pipeline.config import GATES

    return compose(config_option("baseline"), config_option("max_drop", type=float),
                   config_option("gate", type=click.Choice(GATES)))


def _bootstrap_options() -> Decorator:
    return compose(config_option("bootstrap", type=click.IntRange(min=0)), config_option("bootstrap_group"),
                   config_option("bootstrap_seed", type=int))


def _lazy(build: Callable[[], Decorator]) -> Decorator:
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        return build()(func)
    return apply


model_options = _lazy(_model_options)
processing_options = _lazy(_processing_options)
data_options = _lazy(_data_options)
output_options = _lazy(_output_options)
execution_options = _lazy(_execution_options)
history_options = _lazy(_history_options)
gate_options = _lazy(_gate_options)
bootstrap_options = _lazy(_bootstrap_options)


def load_config_file(path: str | None) -> dict[str, Any]:
    """The settings of a JSON or YAML config file (a mapping of flat keys and/or sections)."""
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or use "
                              "JSON.") from err
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of run settings (e.g. {{\"input\": ..., \"output\": "
                          "...}).")
    return data


def explicit_params(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave (not click defaults)."""
    from click.core import ParameterSource

    return {name for name in ctx.params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                                                  None)}


def build_config(command: str, params: dict[str, Any], explicit: set[str],
                 defaults: dict[str, Any] | None = None) -> RunConfig:
    """Merge RunConfig's defaults < `defaults` (the built-in run) < config file < command-line options."""
    merged: dict[str, Any] = {"command": command, **(defaults or {})}
    merged.update(load_config_file(params.get("config_file")))
    for key in RunConfig.keys():
        if key in explicit and params.get(key) is not None:
            merged[key] = params[key]
    overrides = {key: params[key] for key in MODEL_OVERRIDES if params.get(key) is not None}
    if overrides:
        merged["model_config"] = {**merged.get("model_config", {}), **overrides}
    if any(params.get(k) for k in ("s3_endpoint", "s3_region", "s3_anonymous")) or "s3" not in merged:
        merged["s3"] = S3Options(params.get("s3_endpoint"), params.get("s3_region"),
                                 bool(params.get("s3_anonymous")))
    return RunConfig.from_dict(merged)
