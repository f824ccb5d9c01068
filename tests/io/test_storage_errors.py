"""Storage that cannot work is refused before a run, in one `Error:` line naming the URI and what to fix,
in seconds: an unreachable S3 endpoint, a missing bucket, access denied, an empty prefix, a missing local
input."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.cli import main

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections are refused


class _Denying(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request as AWS does for a bucket the credentials may not use."""

    protocol_version = "HTTP/1.1"

    def _deny(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"" if self.command == "HEAD" else ACCESS_DENIED
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _deny

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def denying_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Denying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _score(capsys, *args: str) -> list[str]:
    """stderr lines of `score` (the console entry point, in this process) with a checkpoint that is never
    read: the storage is checked first."""
    with pytest.raises(SystemExit) as exited:
        main(["score", "-c", "never-read.pth", "--no-progress", *args])
    err = capsys.readouterr().err
    assert exited.value.code == 1, err
    return err.strip().splitlines()


def test_an_unreachable_endpoint_is_one_line_within_seconds(capsys, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    lines = _score(capsys, "-i", "s3://data/val", "-o", str(tmp_path / "out"), "--s3-endpoint", endpoint)
    seconds = time.monotonic() - started
    assert lines == [f"Error: --input s3://data/val: cannot reach the S3 endpoint {endpoint}. Check "
                     "--s3-endpoint or AWS_ENDPOINT_URL (and that the server runs)."]
    assert seconds < 15, f"{seconds:.1f} s to report an unreachable endpoint"


def test_a_missing_bucket_is_named_as_such(capsys, tmp_path, s3_server):
    lines = _score(capsys, "-i", "s3://no-such-bucket/val", "-o", str(tmp_path / "out"))
    assert lines == [f"Error: --input s3://no-such-bucket/val: bucket 'no-such-bucket' does not exist at "
                     f"{s3_server}. Check the bucket name, or --s3-endpoint / AWS_ENDPOINT_URL if it is on "
                     "another server."]


def test_a_missing_output_bucket_is_named_before_anything_runs(capsys, tmp_path, s3_bucket, s3_server):
    (tmp_path / "data").mkdir()
    lines = _score(capsys, "-i", str(tmp_path / "data"), "-o", "s3://no-such-output/runs")
    assert len(lines) == 1 and lines[0].startswith(
        "Error: --output s3://no-such-output/runs: bucket 'no-such-output' does not exist"), lines


def test_an_empty_prefix_is_named(capsys, tmp_path, s3_bucket):
    lines = _score(capsys, "-i", f"s3://{s3_bucket}/nothing-here", "-o", str(tmp_path / "out"))
    assert len(lines) == 1 and lines[0].startswith(
        f"Error: --input s3://{s3_bucket}/nothing-here: nothing there"), lines


def test_access_denied_names_the_credentials(capsys, tmp_path, denying_endpoint):
    lines = _score(capsys, "-i", "s3://private/val", "-o", str(tmp_path / "out"), "--s3-endpoint",
                   denying_endpoint)
    assert lines == [f"Error: --input s3://private/val: access denied by {denying_endpoint}. Check the "
                     "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or pass "
                     "--s3-anonymous for a public bucket."]


def test_a_missing_input_folder_is_reported_as_missing(capsys, tmp_path):
    lines = _score(capsys, "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert lines == [f"Error: --input {tmp_path / 'nope'} does not exist: check the path."]
