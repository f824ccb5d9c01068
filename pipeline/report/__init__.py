"""Reports people look at: a per-run report (plots, worst images, errors) and trends across runs.

- `pipeline.report.run_report.write_report(run)`: `report.html` (self-contained, opens offline) and
  `report.md`
  next to a scoring run's metrics.json; `score` calls `report_after_run` at its end unless `--no-report`.
- `pipeline.report.history_report.write_history_report(history)`: `history.html`/`history.md` with mIoU and
  the weakest classes over the runs of a history file.

This package file imports nothing, so the CLI can read `pipeline.report.settings` without loading matplotlib.
"""
