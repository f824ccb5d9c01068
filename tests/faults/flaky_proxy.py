"""An HTTP proxy on 127.0.0.1 that makes an S3 server unreliable: some requests get a 503 SlowDown, some have
their connection dropped before any answer, the rest are forwarded unchanged.

Which requests fail is decided by a counter (every `every`-th request, alternating 503 and drop), so a run
sees the same share of faults each time and a retried request almost never fails twice. Requests whose path
contains `broken` get a 503 every time (an outage of one object, longer than any client's retries).
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    """Start with `with FlakyProxy(upstream, every=5) as proxy:`; `proxy.url` is the endpoint for clients."""

    def __init__(self, upstream: str, every: int = 0, broken: str | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.every = every
        self.broken = broken
        self.requests = 0
        self.injected = {"503": 0, "drop": 0}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.broken and self.broken in path:
                self.injected["503"] += 1
                return "503"
            if not self.every or self.requests % self.every:
                return None
            kind = "503" if (self.requests // self.every) % 2 else "drop"
            self.injected[kind] += 1
            return kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this connection (its own timeout): it retries on a new one

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.path)
                if fault == "drop":  # connection reset: no status line at all
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",
                                                                                          "expect")}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                head = self.command == "HEAD"  # its Content-Length is the object's, with no body sent
                self.send_response(response.status, response.reason)
                skipped = ("connection", "transfer-encoding") + (() if head else ("content-length",))
                for key, value in response.getheaders():
                    if key.lower() not in skipped:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
