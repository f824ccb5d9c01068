"""One way to read, write and list files, whether a URI is a local path or `s3://bucket/key`.

S3 goes through s3fs (botocore underneath). Credentials come only from the standard AWS sources (environment,
shared config, instance role) and are never copied into this package's objects, so they cannot leak into logs,
errors or run records. The endpoint and region come from `S3Options`, else from `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` and `AWS_REGION` / `AWS_DEFAULT_REGION`, so any S3-compatible store works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pipeline.errors import ConfigError, InputError

S3_SCHEME = "s3://"
FIRST_PAGE = 100  # listings start with a small page, so the first inputs are known at once, then go full size
_COUNTS = threading.local()


@contextlib.contextmanager
def count_skipped() -> Iterator[None]:
    """Within the block, in this thread, listings count the hidden files (names starting with '.')."""
    previous = getattr(_COUNTS, "hidden", None)
    _COUNTS.hidden = 0
    try:
        yield
    finally:
        _COUNTS.hidden = previous


def skipped_now() -> int:
    """Hidden files skipped so far inside this thread's `count_skipped` block."""
    return int(getattr(_COUNTS, "hidden", None) or 0)


def _skip_hidden() -> None:
    if getattr(_COUNTS, "hidden", None) is not None:
        _COUNTS.hidden += 1


def _page_sizes(page_size: int) -> Iterator[int]:
    yield min(FIRST_PAGE, page_size)
    while True:
        yield page_size


@dataclass(frozen=True)
class S3Options:
    """Where the S3 API lives. None means: take it from the environment."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    max_attempts: int = 10  # botocore "standard" retries: throttling, 5xx, connection errors, with back-off
    connect_timeout: float = 5.0  # seconds per connection attempt (botocore's default, 60 s, hides a typo)

    def resolved(self) -> S3Options:
        endpoint = (self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return dataclasses.replace(self, endpoint_url=endpoint or None, region=region or None)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/' (local paths too, which is what os.path.join gives on POSIX)."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def stem(uri: str) -> str:
    name = basename(uri)
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def normalize(uri: str) -> str:
    """Absolute local path, or the s3:// URI with a validated bucket."""
    if is_s3(uri):
        bucket = uri[len(S3_SCHEME):].split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"S3 URI {uri!r} has no bucket: write it as s3://BUCKET/PREFIX.")
        return uri.rstrip("/") if uri.count("/") > 2 else uri
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(f"Unsupported URI scheme {scheme!r} in {uri!r}: use a local path or "
                          "s3://BUCKET/PREFIX.")
    return os.path.abspath(os.path.expanduser(uri))


class LocalStorage:
    """Local files. Writes go to a temporary file in the same directory and are renamed into place."""

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def delete(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)

    def open(self, path: str, random_access: bool = False) -> BinaryIO:
        return open(path, "rb")

    def delete_tree(self, path: str) -> None:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)

    def iter_files(self, prefix: str, page_size: int = 1000) -> Iterator[list[str]]:
        """Pages of file paths directly under `prefix/` (sorted within a page), streamed from readdir."""
        if not os.path.isdir(prefix):
            return
        page: list[str] = []
        sizes = _page_sizes(page_size)
        size = next(sizes)
        with os.scandir(prefix) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    _skip_hidden()
                    continue
                try:
                    if not entry.is_file():
                        continue
                except OSError:  # a symbolic-link loop, a vanished entry: the read records the error
                    pass
                page.append(entry.path)
                if len(page) >= size:
                    yield sorted(page)
                    page = []
                    size = next(sizes)
        if page:
            yield sorted(page)


class S3Storage:
    """An S3 bucket through s3fs. Paths are full `s3://bucket/key` URIs."""

    def __init__(self, options: S3Options) -> None:
        import s3fs  # imported here so that local-only runs never pay for it

        options = options.resolved()
        client_kwargs = {"region_name": options.region} if options.region else {}
        self._fs = s3fs.S3FileSystem(
            anon=options.anonymous,
            endpoint_url=options.endpoint_url,
            client_kwargs=client_kwargs,
            config_kwargs={"retries": {"max_attempts": options.max_attempts, "mode": "standard"},
                           "connect_timeout": options.connect_timeout},
            use_listings_cache=False,
        )

    @staticmethod
    def _key(path: str) -> str:
        return path[len(S3_SCHEME):] if is_s3(path) else path

    def read_bytes(self, path: str) -> bytes:
        return self._fs.cat_file(self._key(path))

    def write_bytes(self, path: str, data: bytes) -> None:
        self._fs.pipe_file(self._key(path), data)  # one PUT: the object appears whole or not at all

    def exists(self, path: str) -> bool:
        return self._fs.exists(self._key(path))

    def is_dir(self, path: str) -> bool:
        """Whether any key lies under `path/`: one request however many there are (s3fs's `isdir` lists them
        all first)."""
        from fsspec.asyn import sync

        bucket, _, key = self._key(path).partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        out = sync(self._fs.loop, self._fs._call_s3, "list_objects_v2", Bucket=bucket, Prefix=prefix,
                   MaxKeys=1)
        return bool(out.get("KeyCount") or out.get("Contents") or out.get("CommonPrefixes"))

    def size(self, path: str) -> int:
        return int(self._fs.size(self._key(path)))

    def delete(self, path: str) -> None:
        if self._fs.exists(self._key(path)):
            self._fs.rm_file(self._key(path))

    def delete_tree(self, path: str) -> None:
        key = self._key(path)
        if self._fs.exists(key):
            self._fs.rm(key, recursive=True)

    def open(self, path: str, random_access: bool = False) -> BinaryIO:
        """A seekable reader that fetches 8 MiB ranges on demand (Parquet footers, tar streams).

        `random_access`: each read is one exact ranged GET and nothing more, for reading a few columns of a
        Parquet file (read-ahead would fetch the columns in between, often the whole object).
        """
        if random_access:
            return self._fs.open(self._key(path), "rb", cache_type="none")
        return self._fs.open(self._key(path), "rb", block_size=8 * 2**20)

    def iter_files(self, prefix: str, page_size: int = 1000) -> Iterator[list[str]]:
        """Pages of object URIs directly under `prefix/`, a ListObjectsV2 call each (not the whole bucket)."""
        yield from self._pages(prefix, page_size)

    def iter_range(self, prefix: str, first: str, last: str, page_size: int = 1000) -> Iterator[str]:
        """Object URIs directly under `prefix/` whose names sort in [first, last] (one ranged listing)."""
        start_after = first[:-1]
        for page in self._pages(prefix, page_size, start_after=start_after):
            for uri in page:
                name = basename(uri)
                if name > last:
                    return
                if name >= first:
                    yield uri

    def _pages(self, prefix: str, page_size: int, start_after: str = "") -> Iterator[list[str]]:
        from fsspec.asyn import sync

        bucket, _, key = self._key(prefix).partition("/")
        key = key.rstrip("/") + "/" if key else ""
        sizes = _page_sizes(page_size)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "Delimiter": "/", "MaxKeys": next(sizes)}
        if start_after:
            kwargs["StartAfter"] = key + start_after
        while True:
            out = sync(self._fs.loop, self._fs._call_s3, "list_objects_v2", **kwargs)
            page = []
            for obj in out.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                if basename(obj["Key"]).startswith("."):
                    _skip_hidden()
                    continue
                page.append(f"{S3_SCHEME}{bucket}/{obj['Key']}")
            if page:
                yield page
            if not out.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = out["NextContinuationToken"]
            kwargs["MaxKeys"] = next(sizes)


@functools.lru_cache(maxsize=8)
def _s3_storage(options: S3Options) -> S3Storage:
    return S3Storage(options)


_LOCAL = LocalStorage()


def storage_for(uri: str, s3: S3Options | None = None) -> LocalStorage | S3Storage:
    """The storage that serves `uri` (cached per process, so Ray workers reuse their S3 client)."""
    return _s3_storage(s3 or S3Options()) if is_s3(uri) else _LOCAL


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    """All bytes of one file; a missing file raises InputError naming it."""
    try:
        return storage_for(uri, s3).read_bytes(uri)
    except FileNotFoundError as err:
        raise InputError(f"{uri} does not exist: check the path (and, for S3, the bucket and "
                         "prefix).") from err
    except IsADirectoryError as err:
        raise InputError(f"{uri} is a directory, expected a file.") from err
    except PermissionError as err:
        raise InputError(f"{uri} cannot be read (permission denied): check its permissions or "
                         "credentials.") from err


PREFLIGHT_ATTEMPTS = 2
"""Attempts of the one request that checks a location before a run: an unreachable endpoint is reported in
seconds, not after the run's full retry budget (`S3Options.max_attempts` with back-off, over a minute)."""


def check_location(uri: str, option: str, s3: S3Options | None = None, must_exist: bool = True) -> None:
    """Before a run, refuse a location that cannot work, in one line naming `option`, the URI and the fix:
    a missing local path; an unreachable S3 endpoint, a missing bucket, access denied, nothing under the
    prefix. `must_exist=False` (an output): only the bucket must be there and readable."""
    if not is_s3(uri):
        if must_exist and not os.path.exists(uri):
            raise ConfigError(f"{option} {uri} does not exist: check the path.")
        return
    options = dataclasses.replace((s3 or S3Options()).resolved(), max_attempts=PREFLIGHT_ATTEMPTS)
    storage = _s3_storage(options)
    try:
        found = storage.is_dir(uri) or (must_exist and storage.exists(uri))
    except Exception as err:  # botocore/s3fs errors, whatever their type: one line
        message = s3_error_message(err, uri, option, options)
        if message is None:
            first = (str(err).splitlines() or [""])[0][:300]
            message = (f"{option} {uri}: the S3 endpoint {_endpoint_name(options)} answered "
                       f"{type(err).__name__}: {first}. Check --s3-endpoint / AWS_ENDPOINT_URL and the "
                       "bucket.")
        raise ConfigError(message) from None
    if must_exist and not found:
        raise ConfigError(f"{option} {uri}: nothing there (no object, no key under that prefix) at "
                          f"{_endpoint_name(options)}: check the prefix.")


_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ConnectionRefusedError"}


def _endpoint_name(options: S3Options) -> str:
    return options.endpoint_url or "AWS S3 (no AWS_ENDPOINT_URL set)"


def s3_error_message(err: BaseException, uri: str, option: str, options: S3Options) -> str | None:
    """One line for an S3 failure that the user must fix (endpoint, bucket, credentials), else None."""
    bucket = uri[len(S3_SCHEME):].split("/", 1)[0]
    endpoint = _endpoint_name(options)
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain} | {
        str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) for e in chain}
    text = " ".join(str(e) for e in chain)
    if names & _UNREACHABLE:
        return (f"{option} {uri}: cannot reach the S3 endpoint {endpoint}. Check --s3-endpoint or "
                "AWS_ENDPOINT_URL (and that the server runs).")
    if names & {"NoSuchBucket"} or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return (f"{option} {uri}: bucket {bucket!r} does not exist at {endpoint}. Check the bucket name, or "
                "--s3-endpoint / AWS_ENDPOINT_URL if it is on another server.")
    if "NoCredentialsError" in names:
        return (f"{option} {uri}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE), or pass --s3-anonymous for a public bucket.")
    if names & {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "PermissionError"}:
        return (f"{option} {uri}: access denied by {endpoint}. Check the credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or pass --s3-anonymous for a public bucket.")
    return None


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write a whole file atomically (local: temp file + rename; S3: one PUT)."""
    storage_for(uri, s3).write_bytes(uri, data)
