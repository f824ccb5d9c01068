"""The layout of a run's output folder (local or S3): every file name a run writes is spelled here.

    <output>/
      metrics.json | summary.json      the run's scores (score) or counts (predict)
      errors.jsonl                     one line per input that failed
      report.html, report.md, report_files/
      masks/part-SSSSSS-RRRRRR.parquet one row per image (`pipeline.io.rows.MASK_SCHEMA`)
      png/<safe id>.png                one mask per image (--format png|both)
      _run/settings.json               what decides the results (checked by --resume)
      _run/manifest/                   the shards of the input (`pipeline.io.manifest`)
      _run/parts/<part>.json           one commit record per written part (`pipeline.io.commits`)
      _run/images/<part>.parquet       per-image confusion matrices of a scoring run (any --format)
      _run/lock.json                   who is writing this output now (`pipeline.io.lock`)

Commit records and manifests name these files relative to the output, so a run folder can be moved or copied.
"""

from __future__ import annotations

import hashlib
import re

from pipeline.io import fs

METRICS = "metrics.json"
SUMMARY = "summary.json"
ERRORS = "errors.jsonl"
REPORT_STEM = "report"  # report.html, report.md and report_files/ (`pipeline.report.document.write_document`)
REPORT_HTML = f"{REPORT_STEM}.html"
REPORT_MD = f"{REPORT_STEM}.md"
REPORT_FILES = f"{REPORT_STEM}_files"
MASKS = "masks"
PNG = "png"
RUN_STATE = "_run"
OWN_OUTPUTS = (f"{RUN_STATE}/manifest", f"{RUN_STATE}/parts", f"{RUN_STATE}/images",
               f"{RUN_STATE}/settings.json",
               MASKS, PNG, METRICS, SUMMARY, ERRORS, REPORT_HTML, REPORT_MD, REPORT_FILES)
"""Everything a run writes into its output, but its lock: what a fresh (not resumed) run clears first."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 120


def safe_name(item_id: str) -> str:
    """A file name for an input id that stays in its folder: no '/' or leading dot, at most 131 characters.

    Ids that had to be changed get a short hash of the original, so two different ids never share a name.

    Example:
        >>> safe_name("2007_000032")
        '2007_000032'
        >>> safe_name("../../etc/passwd")
        '_.._etc_passwd-936d7c04cd'
    """
    name = _UNSAFE.sub("_", item_id).lstrip(".")[:_MAX_STEM]
    if name != item_id or not name:
        digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:10]
        name = f"{name or 'item'}-{digest}"
    return name


def metrics_name(scoring: bool) -> str:
    return METRICS if scoring else SUMMARY


def part_name(shard: int, first_row: int) -> str:
    """`part-SSSSSS-RRRRRR`: shard and first row + 1 (row -1, a container's error, sorts first)."""
    return f"part-{shard:06d}-{first_row + 1:06d}"


def parts_dir(output: str) -> str:
    return fs.join(output, RUN_STATE, "parts")


IMAGE_STATS = f"{RUN_STATE}/images"
WRITTEN_FOLDERS = (MASKS, PNG, IMAGE_STATS)
"""The folders of per-part files: a resume deletes the files there that no commit record names."""


def settings_uri(output: str) -> str:
    return fs.join(output, RUN_STATE, "settings.json")


def mask_part_name(part: str) -> str:
    """The mask Parquet of a part, relative to the output."""
    return f"{MASKS}/{part}.parquet"


def image_stats_name(part: str) -> str:
    """The per-image matrices of a part, relative to the output."""
    return f"{IMAGE_STATS}/{part}.parquet"


def png_name(item_id: str) -> str:
    """The PNG of an input, relative to the output."""
    return f"{PNG}/{safe_name(item_id)}.png"


def lock_uri(output: str) -> str:
    return fs.join(output, RUN_STATE, "lock.json")
