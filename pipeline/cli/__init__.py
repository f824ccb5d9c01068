"""The `unet-pipeline` command line."""

from __future__ import annotations

import sys

import click

from pipeline import __version__
from pipeline.cli.bench import bench
from pipeline.cli.compare import compare
from pipeline.cli.export import export
from pipeline.cli.info import layouts, models, processings
from pipeline.cli.report import report
from pipeline.cli.run_commands import predict, score
from pipeline.cli.table import table
from pipeline.errors import PipelineError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unet-pipeline")
def cli() -> None:
    """Score UNet segmentation models on large image datasets with Ray Data.

    Start with `unet-pipeline score` (no arguments): the built-in default run.
    """


for _command in (score, predict, report, compare, bench, table, export, models, layouts, processings):
    cli.add_command(_command)


def main(args: list[str] | None = None, obj: object = None) -> None:
    """Console entry point: pipeline errors become a one-line message and a non-zero exit status.

    `args` default to the command line; `obj` reaches the commands as click's context object (see RunHooks).
    """
    try:
        cli(args=args, obj=obj, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except PipelineError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


__all__ = ["cli", "main"]
