"""`compare`: the paired difference of two scoring runs over the same images, beyond the sample's noise."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from pipeline.cli.options import config_option
from pipeline.io.fs import S3Options

if TYPE_CHECKING:
    from pipeline.metrics.compare import Comparison


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@config_option("bootstrap", type=click.IntRange(min=1),
               help="Paired bootstrap resamples of the images (the same draws for both runs).")
@config_option("bootstrap_group")
@config_option("bootstrap_seed", type=int)
@click.option("--top", type=click.IntRange(min=0), default=12, show_default=True,
              help="How many of the images whose per-image IoU changed most to list (and show in --report).")
@click.option("--report", "report_path",
              help="Write an HTML + Markdown report with thumbnails: a file (cmp/a-vs-b.html) or a folder "
                   "(then compare.html in it), local or s3://.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON instead of tables.")
@click.option("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--s3-region", help="S3 region (default: AWS_REGION).")
@click.option("--s3-anonymous", is_flag=True, help="Read public buckets without credentials.")
def compare(run_a: str, run_b: str, bootstrap: int, bootstrap_group: str | None, bootstrap_seed: int,
            top: int, report_path: str | None, as_json: bool, s3_endpoint: str | None, s3_region: str | None,
            s3_anonymous: bool) -> None:
    """Compare two `score` runs over the same inputs: B - A for every score with a paired 95% interval.

    RUN_A (the baseline) and RUN_B are output folders of finished `score` runs, local or s3://. Only their
    metrics.json and per-image matrices (`_run/images`, columns id and confusion) are read; the masks only for
    the images a --report shows. Runs over different ids are refused, naming the first that differ.

    \b
    Examples:
      unet-pipeline compare runs/fp32 runs/int8
      unet-pipeline compare s3://results/night-1 s3://results/night-2 --report cmp/night-2.html
      unet-pipeline compare runs/a runs/b --bootstrap-group '^[^_]+' --json
    """
    from pipeline.intervals import compare_scored, read_scored_run
    from pipeline.metrics.bootstrap import BootstrapSettings

    s3 = S3Options(s3_endpoint, s3_region, s3_anonymous)
    a, b = read_scored_run(run_a, s3), read_scored_run(run_b, s3)
    settings = BootstrapSettings(resamples=bootstrap, seed=bootstrap_seed)
    comparison = compare_scored(a, b, settings, bootstrap_group, top)
    written = None
    if report_path:
        from pipeline.report.compare_report import write_compare_report

        written = write_compare_report(comparison, a, b, report_path, s3)
    if as_json:
        click.echo(json.dumps({"a": a.output, "b": b.output, **comparison.to_dict(), "group_regex":
                               bootstrap_group, "report": written}, indent=2))
        return
    _print(comparison, a.output, b.output)
    if written:
        click.echo(f"report: {written}")


def _print(comparison: Comparison, a: str, b: str) -> None:
    from pipeline.report.compare_report import SCORE_LABELS, class_rows, interval_cell, number, signed

    settings = comparison.settings
    unit = "images" if comparison.num_groups == comparison.num_images else "groups"
    click.echo(f"B - A over {comparison.num_images} images ({settings.resamples} paired resamples of "
               f"{comparison.num_groups} {unit}, seed {settings.seed}, {100 * settings.confidence:g}% "
               "intervals)")
    click.echo(f"  A: {a}\n  B: {b}")
    width = max(len(label) for label in SCORE_LABELS.values())
    click.echo(f"  {'score'.ljust(width)}  {'A':>7}  {'B':>7}  {'B - A':>8}  interval")
    for name, change in comparison.scores.items():
        label = SCORE_LABELS.get(name, name)
        click.echo(f"  {label.ljust(width)}  {number(change.a):>7}  {number(change.b):>7}"
                   f"  {signed(change.difference.estimate):>8}  {interval_cell(change)}"
                   + ("  changed" if change.changed else ""))
    changed = comparison.changed_classes
    click.echo("classes whose IoU changed beyond their interval: " + (", ".join(changed) or "none"))
    rows = class_rows(comparison)
    width = max([len("class"), *(len(row[0]) for row in rows)])
    click.echo(f"  {'class'.ljust(width)}  {'IoU A':>7}  {'IoU B':>7}  {'B - A':>8}  interval")
    for name, iou_a, iou_b, delta, interval, flag in rows:
        click.echo(f"  {name.ljust(width)}  {iou_a:>7}  {iou_b:>7}  {delta:>8}  {interval}"
                   + ("  changed" if flag else ""))
    if comparison.images:
        click.echo(f"images whose per-image IoU changed most (of {comparison.num_images_ranked}):")
        for image in comparison.images:
            click.echo(f"  {image.id}  {image.iou_a:.4f} -> {image.iou_b:.4f}  ({image.delta:+.4f})")
