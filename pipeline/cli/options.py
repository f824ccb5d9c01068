"""The run options, generated from `RunConfig`'s fields, and the run commands' help (`RunCommand`).

Every option's help text and default come from the configuration field it sets (`pipeline.config`), and the
choices of `--model`, `--layout`, `--processing`, `--backend`, `--precision` and `--calibration` from their
registries, so nothing is spelled twice. The click parameter of an option is named after its flat
configuration key (`input`, `batch_size`, ...); `pipeline.api.build_config` turns them into a `RunConfig`.
Which commands offer an option, and in which help section, follows from its field (`commands=`, its section).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from pipeline.api import MODEL_OVERRIDES, build_config, load_config_file  # noqa: F401 (the commands' too)
from pipeline.config import COMMAND_DEFAULTS, FORMATS, PNG_VALUES, RunConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


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
    if default not in (None, "") and "default" not in kwargs:  # "": required, said by the help
        kwargs["default"] = default
        kwargs.setdefault("show_default", True)
    return click.option(*(flags or (f"--{key.replace('_', '-')}",)), key, **kwargs)


def _precisions() -> list[str]:
    from pipeline.backends import BACKENDS

    seen: dict[str, None] = {}
    for _, entry in BACKENDS.items():
        seen.update(dict.fromkeys(entry.precisions))
    return list(seen)


class BadOptions(click.UsageError):
    """Options that do not make a valid run: exit status 2 with one `Error: ...` line (no usage dump)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class RegistryChoice(click.Choice):
    """The names of a registry, loaded when first needed (help, completion, parsing): the model and
    processing registries import torch, which the CLI does not load before a command needs it. A wrong name
    is refused with the registry's own message (closest name, valid names)."""

    def __init__(self, registry: Callable[[], Any]) -> None:
        self._registry = registry
        self.case_sensitive = False

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._registry().names())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        registry = self._registry()
        name = str(value).strip().lower()
        if name in registry:
            return name
        raise BadOptions(registry.unknown_message(str(value)), ctx)


def _models() -> Any:
    from pipeline.models import MODELS

    return MODELS


def _processings() -> Any:
    from pipeline.processing import PROCESSINGS

    return PROCESSINGS


def _layouts() -> Any:
    from pipeline.datasets import LAYOUTS

    return LAYOUTS


def _model_options() -> Decorator:
    return compose(
        config_option("model", "--model", "-m", type=RegistryChoice(_models)),
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
        config_option("processing", type=RegistryChoice(_processings)),
        config_option("scale", type=float),
        config_option("input_size"),
        config_option("threshold", type=float),
    )


def _data_options() -> Decorator:
    return compose(
        config_option("input", "--input", "-i"),
        config_option("layout", "--layout", "-l", type=RegistryChoice(_layouts)),
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
        config_option("verbose", "--verbose", "-v", is_flag=True, default=False, show_default=False),
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


def explicit_params(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave (not click defaults)."""
    from click.core import ParameterSource

    return {name for name in ctx.params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                                                  None)}


# -- help per command -------------------------------------------------------------------------------------

ESSENTIALS = ("input", "layout", "model", "checkpoint", "output")
"""The options a first run needs, shown first in every run command's help."""
GROUP_TITLES = {"data": "Data", "model": "Model", "processing": "Processing", "backend": "Backend",
                "execution": "Execution", "output": "Output", "tracking": "Scheduling"}
"""The help section of each configuration section (`pipeline.config.SECTIONS`), in this order."""
_OTHER_GROUPS = {**dict.fromkeys(MODEL_OVERRIDES, "model"),
                 **dict.fromkeys(("s3_endpoint", "s3_region", "s3_anonymous"), "data")}


def option_group(name: str | None) -> str:
    """The help section of the parameter `name`: its configuration field's section, else "Other"."""
    where = RunConfig.keys().get(name or "")
    section = where.section if where is not None else _OTHER_GROUPS.get(name or "")
    return GROUP_TITLES[section] if section else "Other"


def applies_to(name: str | None, command: str) -> bool:
    """Whether the parameter `name` does something for `command` (its field's `commands` mark)."""
    where = RunConfig.keys().get(name or "")
    commands = where.field.metadata.get("commands") if where is not None else None
    return commands is None or command in commands


class RunCommand(click.Command):
    """A command built on the run options: only those that apply to `run_command`, that command's defaults
    (`pipeline.config.COMMAND_DEFAULTS`), and help in sections, the essentials first."""

    def __init__(self, *args: Any, run_command: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_command = run_command
        self.params = [p for p in self.params if applies_to(p.name, run_command)]
        for param in self.params:
            if param.name in COMMAND_DEFAULTS.get(run_command, {}):
                param.default = COMMAND_DEFAULTS[run_command][param.name]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {
            "Essential": [], **{title: [] for title in GROUP_TITLES.values()}, "Other": []}
        essentials: dict[str, tuple[str, str]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.name in ESSENTIALS:
                essentials[param.name] = record
            else:
                sections[option_group(param.name)].append(record)
        sections["Essential"] = [essentials[name] for name in ESSENTIALS if name in essentials]
        for title, rows in sections.items():
            if rows:
                with formatter.section(f"{title} options"):
                    formatter.write_dl(rows)
