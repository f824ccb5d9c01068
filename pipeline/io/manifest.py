"""Cutting a dataset into shards, and remembering the cut so that a resumed run sees the same shards.

A shard is the unit of listing, committing and resuming. For file layouts the listing is streamed into
manifest files of `shard_size` items each (`<run>/_run/manifest/shard-NNNNNN.jsonl`), so the driver never
holds the list of inputs; for container layouts (parquet, webdataset) each container file is a shard.
`index.json`, written last, records the shards (manifests named relative to the run folder, so the folder can
be moved); its presence means the listing finished.

`Listing` lists in a background thread and hands out shards as their manifests are written, so the first
shards are scored while later pages are still being listed. Files whose names start with a dot are skipped and
counted (`skipped_hidden`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import DataConfig
from pipeline.datasets import ContainerLayout, Item, Layout
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.outputs import RUN_STATE

INDEX_NAME = "index.json"
MANIFEST = f"{RUN_STATE}/manifest"


@dataclass(frozen=True)
class ShardRef:
    """One shard: `uri` is its manifest file (kind "items") or the container file (kind "container")."""

    index: int
    uri: str
    kind: str
    size: int | None  # rows, when known before reading (items); None for containers


def manifest_dir(run_dir: str) -> str:
    return fs.join(run_dir, MANIFEST)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_index(run_dir: str, s3: fs.S3Options | None = None) -> dict | None:
    """A run's finished listing (`index.json`, manifest URIs made absolute), or None if it never finished."""
    uri = fs.join(manifest_dir(run_dir), INDEX_NAME)
    storage = fs.storage_for(uri, s3)
    if not storage.exists(uri):
        return None
    index = json.loads(storage.read_bytes(uri))
    index["shards"] = [ShardRef(s["index"], _absolute(run_dir, s["uri"], s["kind"]), s["kind"], s["size"])
                       for s in index["shards"]]
    return index


def _absolute(run_dir: str, uri: str, kind: str) -> str:
    """Manifests are named relative to the run folder (older runs: absolute, kept as they are)."""
    if kind == "items" and not fs.is_s3(uri) and not uri.startswith("/"):
        return fs.join(run_dir, uri)
    return uri


def _relative(run_dir: str, ref: ShardRef) -> str:
    prefix = run_dir.rstrip("/") + "/"
    return ref.uri[len(prefix):] if ref.kind == "items" and ref.uri.startswith(prefix) else ref.uri


class Listing:
    """The shards of one run's input, listed (or read back for `--resume`) in a background thread.

    Iterate `shards()` to get each shard as soon as its manifest is written; `all()` waits for the end. A
    listing error (no such folder, no inputs) is raised by both.
    """

    def __init__(self, layout: Layout, input_uri: str, options: DataConfig, run_dir: str, shard_size: int,
                 s3: fs.S3Options | None = None, reuse: bool = False, expect_labels: bool = False,
                 limit: int | None = None) -> None:
        self.layout = layout
        self.input_uri = input_uri
        self.options = options
        self.run_dir = run_dir
        self.shard_size = shard_size
        self.s3 = s3
        self.reuse = reuse
        self.expect_labels = expect_labels
        self.limit = limit
        self.skipped_hidden = 0
        self.inputs = 0  # listed so far (file layouts)
        self.seconds = 0.0  # how long the listing took
        self.finished_at = 0.0  # when it ended (Unix seconds)
        self._shards: list[ShardRef] = []
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="listing", daemon=True)

    def start(self) -> Listing:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        with self._changed:
            return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the listing to end; whether it has."""
        with self._changed:
            self._changed.wait_for(lambda: self._done, timeout)
            return self._done

    def shards(self) -> Iterator[ShardRef]:
        """Every shard in order, each as soon as it is listed (blocks until the next one or the end)."""
        position = 0
        while True:
            available, finished = self.new_shards(position)
            yield from available
            position += len(available)
            if finished and not available:
                return

    def new_shards(self, seen: int) -> tuple[list[ShardRef], bool]:
        """(shards listed after the first `seen`, whether the listing has ended); blocks until there is a new
        shard or the end."""
        with self._changed:
            self._changed.wait_for(lambda: self._done or len(self._shards) > seen)
            if self._error is not None:
                raise self._error
            return self._shards[seen:], self._done

    def all(self) -> list[ShardRef]:
        self.wait()
        if self._error is not None:
            raise self._error
        return list(self._shards)

    def _add(self, ref: ShardRef) -> None:
        with self._changed:
            self._shards.append(ref)
            self._changed.notify_all()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            with fs.count_skipped():
                self._list()
        except BaseException as err:  # handed to the driver, which raises it
            with self._changed:
                self._error = err
        finally:
            self.seconds = time.perf_counter() - started
            self.finished_at = time.time()
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def _list(self) -> None:
        directory = manifest_dir(self.run_dir)
        storage = fs.storage_for(directory, self.s3)
        index = read_index(self.run_dir, self.s3) if self.reuse else None
        if index is not None:
            if index["input"] != self.input_uri or index["layout"] != self.layout.name:
                raise ConfigError(
                    f"--resume: the run at {self.run_dir} was made from {index['input']} ({index['layout']} "
                    f"layout), not {self.input_uri} ({self.layout.name}). Resume with the same "
                    "--input/--layout, or pick a new --output.")
            self.skipped_hidden = int(index.get("skipped_hidden", 0))
            for ref in index["shards"]:
                self.inputs += ref.size or 0
                self._add(ref)
            return
        layout = self.layout
        if isinstance(layout, ContainerLayout):
            if self.limit is not None:
                raise ConfigError(f"--limit works with file layouts, not with {layout.name} containers: "
                                  "split the containers, or score them whole.")
            for i, uri in enumerate(layout.containers(self.input_uri, self.s3)):
                if i == 0:
                    layout.check(uri, self.options, self.s3, self.expect_labels)
                self._add(ShardRef(i, uri, "container", None))
        else:
            items = layout.items(self.input_uri, self.options, self.s3)
            if self.limit is not None:
                items = itertools.islice(items, self.limit)
            for i, chunk in enumerate(_chunks(items, self.shard_size)):
                uri = fs.join(directory, shard_name(i) + ".jsonl")
                data = "".join(json.dumps([it.id, it.image, it.label]) + "\n" for it in chunk).encode("utf-8")
                if self.reuse and storage.exists(uri) and storage.read_bytes(uri) != data:
                    raise ConfigError(
                        f"--resume: the input {self.input_uri} lists differently from the interrupted run "
                        f"(shard {i} changed), and that run's listing never finished, so its committed parts "
                        "cannot be matched to inputs. Run again without --resume.")
                storage.write_bytes(uri, data)
                self.inputs += len(chunk)
                self._add(ShardRef(i, uri, "items", len(chunk)))
        if not self._shards:
            raise ConfigError(
                f"No inputs found in {self.input_uri} for the {layout.name} layout: check --input and "
                "--layout (`unet-pipeline layouts` lists what each layout expects).")
        self.skipped_hidden = fs.skipped_now()
        index_data = {"input": self.input_uri, "layout": layout.name, "skipped_hidden": self.skipped_hidden,
                      "shards": [{**ref.__dict__, "uri": _relative(self.run_dir,
                                                                   ref)} for ref in self._shards]}
        storage.write_bytes(fs.join(directory, INDEX_NAME), json.dumps(index_data).encode("utf-8"))


def plan_shards(layout: Layout, input_uri: str, options: DataConfig, run_dir: str, shard_size: int,
                s3: fs.S3Options | None = None, reuse: bool = False, expect_labels: bool = False,
                limit: int | None = None) -> list[ShardRef]:
    """List the input once and return its shards, writing the manifest under `run_dir` (see `Listing`).

    With `reuse`, an existing complete manifest (same input and layout) is returned instead of listing again,
    which is what makes `--resume` see exactly the shards of the interrupted run.
    """
    return Listing(layout, input_uri, options, run_dir, shard_size, s3, reuse, expect_labels,
                   limit).start().all()


def read_items(ref: ShardRef, s3: fs.S3Options | None = None) -> list[Item]:
    """The items of one "items" shard, in manifest order (row i of the shard = line i)."""
    lines = fs.read_bytes(ref.uri, s3).decode("utf-8").splitlines()
    return [Item(*json.loads(line)) for line in lines if line]
