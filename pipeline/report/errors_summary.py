"""The run's errors grouped by kind (stage and exception class), with a few examples of each.

`errors.jsonl` is streamed line by line, so a run with millions of bad inputs costs one pass and a few
examples of memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.io import fs
from pipeline.io.outputs import ERRORS


@dataclass
class ErrorKind:
    stage: str
    error_class: str
    count: int = 0
    examples: list[dict] = field(default_factory=list)


def summarize_errors(output: str, s3: fs.S3Options | None = None,
                     examples: int = 3) -> list[ErrorKind] | None:
    """Kinds of error, most frequent first; None when the run has no errors.jsonl."""
    uri = fs.join(output, ERRORS)
    storage = fs.storage_for(uri, s3)
    if not storage.exists(uri):
        return None
    kinds: dict[tuple[str, str], ErrorKind] = {}
    with storage.open(uri) as handle:
        for line in handle:
            if not line.strip():
                continue
            error = json.loads(line)
            key = (error.get("error_stage") or "?", error.get("error_class") or "?")
            kind = kinds.setdefault(key, ErrorKind(*key))
            kind.count += 1
            if len(kind.examples) < examples:
                kind.examples.append(error)
    return sorted(kinds.values(), key=lambda k: (-k.count, k.stage, k.error_class))
