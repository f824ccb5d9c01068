"""`score` and `predict`: the pipeline's two jobs, with the same options."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.options import (
    BadOptions,
    RunCommand,
    bootstrap_options,
    build_config,
    data_options,
    execution_options,
    explicit_params,
    gate_options,
    history_options,
    model_options,
    output_options,
    processing_options,
)
from pipeline.cli.summary import print_summary, print_warnings
from pipeline.config import COMMAND_DEFAULTS, RunConfig
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.progress import Progress
    from pipeline.results import RunResult


@dataclass(frozen=True)
class RunHooks:
    """What a program embedding the CLI (the Ray job entry points) passes as click's `obj`."""

    # e.g. LineProgress: progress lines for a job log, whatever the terminal says
    progress: Callable[[], Progress] | None = None
    # e.g. the jobs' refusal of an output that dies with the job: raise click.UsageError to refuse
    check_config: Callable[[RunConfig], None] | None = None


def run_options(func):
    """The options both run commands take (same names everywhere)."""
    for decorator in (history_options, execution_options, output_options, processing_options, data_options,
                      model_options):
        func = decorator(func)
    return func


def default_run_settings(params: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """With no --input, the built-in default (synthetic shapes + the packaged checkpoint)."""
    from pipeline.api import builtin_defaults
    from pipeline.defaults import DEFAULT_OUTPUT, explicit_arguments

    try:
        defaults = builtin_defaults(params, explicit)
    except ConfigError as err:
        raise BadOptions(str(err)) from None
    if defaults:
        command = shlex.join(explicit_arguments(params.get("output") or DEFAULT_OUTPUT))
        click.echo("No --input: running the built-in default (synthetic shapes, packaged small milesial "
                   f"UNet), which is:\n  unet-pipeline score {command}", err=True)
    return defaults



def execute(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the pipeline; a tracked run (--run-id / --history) goes through the run history and its gate."""
    from pipeline import api

    return api.execute(config, progress)


def _execute(config: RunConfig, as_json: bool) -> None:
    from pipeline.history import RegressionGateFailed
    from pipeline.progress import progress_for

    hooks = click.get_current_context().find_object(RunHooks) or RunHooks()
    if hooks.check_config is not None:
        hooks.check_config(config)
    enabled = config.execution.progress
    progress = hooks.progress() if hooks.progress and enabled is not False else progress_for(enabled)
    try:
        result = execute(config, progress)
    except RegressionGateFailed as err:  # the run itself finished: show its metrics before the failure
        _show(err.result.metrics, err.result.output, as_json)
        raise
    _show(result.metrics, result.output, as_json)


def _show(metrics: dict[str, Any], output: str, as_json: bool) -> None:
    print_warnings(metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        print_summary(metrics, output)


def _config(command: str, params: dict[str, Any], explicit: set[str], defaults: dict[str, Any]) -> RunConfig:
    """The run's configuration; options that do not make a valid one are a usage error (exit status 2)."""
    try:
        return build_config(command, params, explicit, defaults)
    except ConfigError as err:
        raise BadOptions(str(err)) from None


@click.command(cls=RunCommand, run_command="score")
@run_options
@gate_options
@bootstrap_options
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of a summary.")
@click.pass_context
def score(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Score a model on a labelled dataset: masks, per-image scores and metrics.json (mIoU, per-class
    IoU, ...).

    With no --input, runs the built-in default: a synthetic shapes dataset and a small trained checkpoint.

    \b
    Examples:
      unet-pipeline score
      unet-pipeline score -m bubbliiiing-vgg16 -c unet_vgg_voc.pth -i ~/VOCdevkit/VOC2012 -l voc -o runs/voc
      unet-pipeline score -m milesial -c unet_carvana_scale0.5_epoch2.pth -i s3://data/carvana -l carvana \\
          -o s3://results/carvana --scale 0.5 --format both
    """
    explicit = explicit_params(ctx)
    config = _config("score", params, explicit, default_run_settings(params, explicit))
    _execute(config, as_json)


@click.command(cls=RunCommand, run_command="predict")
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout instead of a summary.")
@click.pass_context
def predict(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Predict masks (no labels needed): Parquet shards and/or one class-index PNG per image.

    \b
    Examples:
      unet-pipeline predict -m milesial -c model.pth -i photos/ -l folder -o masks/ --format png
      unet-pipeline predict -c unet_membrane.hdf5 -i s3://em/test -l folder -o s3://em/pred --format both
    """
    explicit = explicit_params(ctx)
    config = _config("predict", params, explicit, COMMAND_DEFAULTS["predict"])
    _execute(config, as_json)
