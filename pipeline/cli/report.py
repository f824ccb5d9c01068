"""`report`: the HTML/Markdown report of a finished scoring run, or the trends of a run history."""

from __future__ import annotations

import click

from pipeline.io.fs import S3Options
from pipeline.report.settings import CONFUSION_SCALES, DEFAULT_CLASSES, DEFAULT_WORST


@click.command()
@click.argument("run_uri", required=False)
@click.option("--history", "history_uri",
              help="A run history (JSON Lines, one run per line, local or s3://): report trends across runs.")
@click.option("--out",
              help="Folder for the report (default: the run's folder, or the history file's folder).")
@click.option("--worst", type=click.IntRange(min=0), default=DEFAULT_WORST, show_default=True,
              help="How many of the worst images (lowest per-image IoU) to show.")
@click.option("--confusion-scale", type=click.Choice(CONFUSION_SCALES), default="auto", show_default=True,
              help="Colour scale of the confusion matrix (auto: log above 20 classes).")
@click.option("--classes", type=click.IntRange(min=1), default=DEFAULT_CLASSES, show_default=True,
              help="--history: how many of the weakest classes to plot over runs.")
@click.option("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--s3-region", help="S3 region (default: AWS_REGION).")
@click.option("--s3-anonymous", is_flag=True, help="Read public buckets without credentials.")
def report(run_uri: str | None, history_uri: str | None, out: str | None, worst: int, confusion_scale: str,
           classes: int, s3_endpoint: str | None, s3_region: str | None, s3_anonymous: bool) -> None:
    """Write report.html (self-contained, opens offline) and report.md for a finished `score` run.

    RUN_URI is the run's output folder (or its metrics.json), local or s3://. `score` writes this report
    itself unless --no-report; use this command to remake it (other --worst, another --out). With --history,
    write history.html/history.md instead: mIoU and the weakest classes over runs, baseline and failed runs
    marked.

    \b
    Examples:
      unet-pipeline report runs/default
      unet-pipeline report s3://results/voc/2026-11-24 --out reports/voc --worst 24
      unet-pipeline report --history s3://results/voc/history.jsonl --out reports/voc
    """
    from pipeline.report.history_report import write_history_report
    from pipeline.report.run_report import write_report

    if (run_uri is None) == (history_uri is None):
        raise click.UsageError("Give either RUN_URI (a score run's output folder) or --history URI, not "
                               "both/neither.")
    s3 = S3Options(s3_endpoint, s3_region, s3_anonymous)
    if history_uri is not None:
        written = write_history_report(history_uri, s3, out=out, classes=classes)
    else:
        assert run_uri is not None  # one of the two, checked above
        written = write_report(run_uri, s3, worst=worst,
                               confusion_scale=confusion_scale,  # type: ignore[arg-type]
                               out=out)
    click.echo(f"report: {written}")
