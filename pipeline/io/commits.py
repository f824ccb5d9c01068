"""Commit records: the typed record a sink task writes last for each part, and reading them back.

A part is the rows of one shard that one write task received together. Its files (Parquet part, PNGs) are
written first; its `PartRecord` (`_run/parts/<part>.json`) last, so a part without a record is incomplete and
is redone by `--resume`. The record is what crosses the Ray boundary from the sink to the driver and what the
progress lines and `--resume` read: nobody parses the JSON by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.io import fs
from pipeline.io.outputs import parts_dir
from pipeline.io.rows import STORAGE_STAGE, ErrorRecord
from pipeline.metrics import ConfusionAccumulator

_READ_THREADS = 16


@dataclass(frozen=True)
class PartRecord:
    """What one part wrote and scored.

    Attributes:
        part: its name, `part-SSSSSS-RRRRRR` (`pipeline.io.outputs.part_name`).
        shard: the shard its rows belong to.
        rows: the shard rows it holds (results and errors).
        num_ok: rows with a mask.
        num_errors: rows that failed (`errors`).
        scores: the confusion-matrix state of its scored rows (empty for predict).
        errors: one record per failed row.
        files: the files it wrote (mask Parquet part, PNGs).
        committed: False when a row failed because the storage failed: the record is then not written, so that
            `--resume` redoes the part, while this run still counts it.
        inferred_at, written_at: when its inference ended and when it was committed (Unix seconds; the commit
            lag is their difference).
        actor: the process that inferred and wrote it (`host:pid`).
    """

    part: str
    shard: int
    rows: tuple[int, ...]
    num_ok: int
    num_errors: int
    scores: ConfusionAccumulator
    errors: tuple[ErrorRecord, ...]
    files: tuple[str, ...]
    committed: bool
    inferred_at: float = 0.0
    written_at: float = 0.0
    actor: str = ""

    @property
    def storage_failures(self) -> int:
        return sum(e.error_stage == STORAGE_STAGE for e in self.errors)

    def to_json(self) -> dict[str, Any]:
        return {"part": self.part, "shard": self.shard, "rows": list(self.rows), "num_ok": self.num_ok,
                "num_errors": self.num_errors, **self.scores.to_json(),
                "errors": [e.to_json() for e in self.errors], "files": list(self.files),
                "committed": self.committed, "inferred_at": round(self.inferred_at, 3),
                "written_at": round(self.written_at, 3), "actor": self.actor}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartRecord:
        return cls(part=data["part"], shard=int(data["shard"]), rows=tuple(data["rows"]),
                   num_ok=int(data["num_ok"]), num_errors=int(data["num_errors"]),
                   scores=ConfusionAccumulator.from_json(data),
                   errors=tuple(ErrorRecord.from_json(e) for e in data["errors"]), files=tuple(data["files"]),
                   committed=bool(data.get("committed", True)), inferred_at=float(data.get("inferred_at",
                                                                                           0.0)),
                   written_at=float(data.get("written_at", 0.0)), actor=str(data.get("actor", "")))


def record_uri(output: str, part: str) -> str:
    return fs.join(parts_dir(output), part + ".json")


def write_record(output: str, record: PartRecord, s3: fs.S3Options | None) -> None:
    """Commit a part: its record is written whole (temporary file + rename locally, one PUT on S3)."""
    fs.write_bytes(record_uri(output, record.part), json.dumps(record.to_json()).encode("utf-8"), s3)


def record_uris(output: str, s3: fs.S3Options | None) -> Iterator[str]:
    """The URIs of the commit records present now, page by page."""
    storage = fs.storage_for(output, s3)
    for page in storage.iter_files(parts_dir(output)):
        yield from (uri for uri in page if uri.endswith(".json"))


def read_records(uris: Iterable[str], s3: fs.S3Options | None) -> list[PartRecord]:
    """Read commit records (small files, in parallel)."""
    uris = list(uris)
    if not uris:
        return []
    storage = fs.storage_for(uris[0], s3)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        return list(pool.map(lambda uri: PartRecord.from_json(json.loads(storage.read_bytes(uri))), uris))


def committed_parts(output: str, s3: fs.S3Options | None) -> list[PartRecord]:
    """Every commit record of the run in `output`."""
    return read_records(record_uris(output, s3), s3)
