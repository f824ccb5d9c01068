"""The commit/resume protocol around one run's output folder.

* A fresh run clears what earlier runs wrote there (`clear_outputs`); a resumed one keeps it.
* `_run/settings.json` records the settings that decide the results (the `result` fields of `RunConfig` and
  the
  checkpoint's sha256); `--resume` refuses to mix in results made with other ones.
* Rows that committed parts hold are skipped (`done_rows`); at the end every listed row must be in exactly one
  part (`check_every_input_accounted`), and a resumed run deletes part files that no commit record names
  (`remove_orphan_files`: left by an attempt killed between writing a part and committing it). Records name
  their files relative to the output, so a run folder reached through a symlink, copied or moved resumes with
  every committed file kept; a file is deleted only if it lies in the output's own part folders and no record
  names it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord
from pipeline.io.manifest import ShardRef
from pipeline.io.outputs import OWN_OUTPUTS, WRITTEN_FOLDERS, parts_dir, settings_uri
from pipeline.results import RunFailed


def check_writable(output: str, s3: fs.S3Options | None) -> None:
    """Refuse, before anything runs or is written, a local output this process cannot create or write (a
    read-only file system, a folder without write permission), with a one-line error naming it. S3 permissions
    show on the first write (the output lock), with the storage's own message."""
    if fs.is_s3(output):
        return
    existing = output
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if os.path.exists(existing) and not os.path.isdir(existing):
        raise ConfigError(f"--output {output}: {existing} is a file, not a folder. Pick another --output.")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        where = "" if existing == output else f" (its nearest existing folder {existing} is not writable)"
        raise ConfigError(f"--output {output} is not writable ({reason}){where}: pick a folder this user can "
                          "write, or fix its permissions.")


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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


def relative_name(output: str, name: str) -> str:
    """A record's file name relative to the output (records of older versions hold absolute URIs)."""
    if fs.is_s3(name) or name.startswith("/"):
        for base in {output, _resolved(output)}:
            prefix = base.rstrip("/") + "/"
            if name.startswith(prefix):
                return name[len(prefix):]
        return name  # not inside this output: never matches a file found there, so nothing is kept by mistake
    return name


def remove_orphan_files(output: str, parts: Sequence[PartRecord], s3: fs.S3Options | None) -> int:
    """Delete the part files no commit record names, left by an attempt killed between writing a part and
    committing it. Only the output's own part folders are looked at; returns how many files were deleted."""
    storage = fs.storage_for(output, s3)
    kept = {relative_name(output, name) for part in parts for name in part.files}
    deleted = 0
    for folder in WRITTEN_FOLDERS:
        directory = fs.join(output, folder)
        for page in storage.iter_files(directory):
            for uri in page:
                if f"{folder}/{fs.basename(uri)}" not in kept:
                    storage.delete(uri)
                    deleted += 1
    return deleted


def _resolved(output: str) -> str:
    return output if fs.is_s3(output) else os.path.realpath(output)
