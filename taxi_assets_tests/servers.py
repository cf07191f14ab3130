"""Real servers on 127.0.0.1 for tests: a static file server with scripted failures, moto's S3."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FileServer:
    """Serves ``root`` over HTTP (GET and HEAD); ``fail_first[path] = n`` answers 503 to the first
    n requests for a path. ``requests`` counts them as "GET path" / "HEAD path"."""

    def __init__(self, root: Path):
        self.root = root
        self.fail_first: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                self._answer(send_body=True)

            def do_HEAD(self):  # noqa: N802
                self._answer(send_body=False)

            def _answer(self, send_body: bool):
                path = self.path.lstrip("/")
                server.requests[f"{self.command} {path}"] += 1
                server.attempts[path] += 1
                if server.attempts[path] <= server.fail_first.get(path, 0):
                    self.send_error(503, "Service Unavailable")
                    return
                file = (server.root / path).resolve()
                if server.root.resolve() not in file.parents or not file.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{file.stat().st_mtime_ns}"')
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def moto_s3_server():
    """moto's standalone S3 on a free port of 127.0.0.1; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
