"""The commit/resume protocol around one run's output folder.

* A fresh run clears what earlier runs wrote there (`clear_outputs`); a resumed one keeps it.
* `_run/settings.json` records the settings that decide the results (the `result` fields of `RunConfig` and
  the
  checkpoint's sha256); `--resume` refuses to mix in results made with other ones.
* Rows that committed parts hold are skipped (`done_rows`); at the end every listed row must be in exactly one
  part (`check_every_input_accounted`), and a resumed run deletes mask files that no commit record names
  (`remove_orphan_files`: left by an attempt killed between writing a part and committing it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord
from pipeline.io.manifest import ShardRef
from pipeline.io.outputs import MASKS, OWN_OUTPUTS, parts_dir, settings_uri
from pipeline.results import RunFailed


def clear_outputs(output: str, s3: fs.S3Options | None) -> None:
    """Delete everything a run writes in `output` (and nothing else)."""
    storage = fs.storage_for(output, s3)
    for name in OWN_OUTPUTS:
        storage.delete_tree(fs.join(output, name))


def check_resume_settings(config: RunConfig, checkpoint_sha256: str, s3: fs.S3Options | None) -> None:
    """Record the settings that decide the results; on --resume, refuse settings differing from the record."""
    settings = {**config.result_settings(), "checkpoint_sha256": checkpoint_sha256}
    uri = settings_uri(config.output.uri)
    storage = fs.storage_for(uri, s3)
    if config.execution.resume and storage.exists(uri):
        before = json.loads(storage.read_bytes(uri))
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            detail = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--resume: the run in {config.output.uri} was made with other settings ({detail}), and its "
                "committed results would be mixed with new ones. Resume with the same settings, or drop "
                "--resume to start over.")
        return
    storage.write_bytes(uri, json.dumps(settings, indent=2).encode("utf-8"))


def done_rows(parts: Sequence[PartRecord], output: str) -> dict[int, frozenset[int]]:
    """Shard -> rows already committed; a row committed twice would be counted twice, so it stops the run."""
    done: dict[int, set[int]] = {}
    for part in parts:
        rows = done.setdefault(part.shard, set())
        if not rows.isdisjoint(part.rows):
            raise PipelineError(
                f"--resume: part {part.part} commits rows of shard {part.shard} that another part already "
                f"holds, so the records in {parts_dir(output)} are inconsistent. Run again without --resume.")
        rows.update(part.rows)
    return {shard: frozenset(rows) for shard, rows in done.items()}


def check_every_input_accounted(shards: Sequence[ShardRef], parts: Sequence[PartRecord]) -> None:
    """processed + errored = inputs: every row of a listed shard must be in exactly one part.

    Container shards (parquet, webdataset) are not counted before they are read, so only listed shards are
    checked.
    """
    seen: Counter[int] = Counter()
    for part in parts:
        seen[part.shard] += len(part.rows)
    missing = [(ref.index, ref.size - seen[ref.index]) for ref in shards
               if ref.size is not None and seen[ref.index] != ref.size]
    if missing:
        listed = ", ".join(f"shard {i}: {n}" for i, n in missing[:10])
        raise RunFailed(
            f"{len(missing)} shard(s) have inputs with neither a result nor an error (missing rows "
            f"{listed}): the pipeline lost them. Run the same command with --resume to redo exactly those.")


def remove_orphan_files(output: str, parts: Sequence[PartRecord], s3: fs.S3Options | None) -> None:
    """Delete mask files no part names: left by an attempt killed between writing a part and committing it."""
    storage = fs.storage_for(output, s3)
    kept = {uri for part in parts for uri in part.files}
    for page in storage.iter_files(fs.join(output, MASKS)):
        for uri in page:
            if uri not in kept:
                storage.delete(uri)
