"""Servers on 127.0.0.1 for the remote-input tests, each counting what it serves.

* :func:`serve_files`: a folder over http that honours ``Range`` requests (one range per
  request, as GDAL asks), optionally behind HTTP basic authentication;
* :func:`serve_s3`: an S3-compatible server, moto's server mode (its WSGI application under
  werkzeug's threaded server, wrapped to count the bytes it sends).

Both yield a :class:`Served` tally: bytes of response bodies per path and each request as
``(method, path, range header)``.
"""

from __future__ import annotations

import base64
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Bytes written to the socket at a time.
_CHUNK = 1 << 16


@dataclass
class Served:
    """What a server has answered: body bytes per path, and every request."""

    url: str
    bytes_by_path: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, range_header: str, body_bytes: int) -> None:
        """Count one answered request."""
        with self.lock:
            self.requests.append((method, path, range_header))
            self.bytes_by_path[path] += body_bytes

    def reset(self) -> None:
        """Forget what was served so far."""
        with self.lock:
            self.requests.clear()
            self.bytes_by_path.clear()


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a single ``bytes=`` range, None if it is not one."""
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        return max(size - int(last), 0), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


class _FileHandler(BaseHTTPRequestHandler):
    """GET and HEAD of the files under ``server.root``, ranges honoured."""

    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL expects of a file server
    server: _FileServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the tests read the tally, not a log."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        range_header = self.headers.get("Range", "")
        if not self._authorized():
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="geoseg-test"'}, body)
            return
        file = (self.server.root / path.lstrip("/")).resolve()
        if self.server.root not in file.parents or not file.is_file():
            self._send(404, b"not found", {}, body)
            return
        data = file.read_bytes()
        size = len(data)
        stamp = {"ETag": f'"{size:x}-{file.stat().st_mtime_ns:x}"', "Accept-Ranges": "bytes"}
        stamp["Last-Modified"] = self.date_time_string(int(file.stat().st_mtime))
        span = _byte_range(range_header, size) if range_header else None
        if range_header and (span is None or span[0] >= size):
            self._send(416, b"", {"Content-Range": f"bytes */{size}"}, body)
            return
        if span is None:
            sent = self._send(200, data, stamp, body)
        else:
            start, end = span
            stamp["Content-Range"] = f"bytes {start}-{end}/{size}"
            sent = self._send(206, data[start : end + 1], stamp, body)
        self.server.served.record(self.command, path, range_header, sent)

    def _authorized(self) -> bool:
        expected = self.server.auth
        if expected is None:
            return True
        token = base64.b64encode(f"{expected[0]}:{expected[1]}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {token}"

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> int:
        """Send a response; the body bytes sent."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        sent = 0
        # In pieces, counting what went out: a client may read the headers of a whole-file
        # answer and hang up (GDAL does, to learn a presigned URL's size).
        while body and sent < len(data):
            try:
                self.wfile.write(data[sent : sent + _CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                break
            sent += min(_CHUNK, len(data) - sent)
        return sent


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, served: Served, auth: tuple[str, str] | None) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.root = root.resolve()
        self.served = served
        self.auth = auth


@contextmanager
def running(server: HTTPServer) -> Iterator[str]:
    """Run ``server`` (bound to 127.0.0.1) in a thread until the block ends; yield its URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def serve_files(root: Path, auth: tuple[str, str] | None = None) -> Iterator[Served]:
    """Serve ``root`` at ``http://127.0.0.1:PORT/`` (``auth``: basic user and password)."""
    served = Served(url="")
    with running(_FileServer(root, served, auth)) as served.url:
        yield served


class _Counting:
    """A WSGI application that counts the response bytes of the one it wraps."""

    def __init__(self, app: Callable[..., Iterable[bytes]], served: Served) -> None:
        self.app = app
        self.served = served

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in self.app(environ, start_response):
                sent += len(chunk)
                yield chunk
        finally:
            path = unquote(environ.get("PATH_INFO", ""))
            method = environ.get("REQUEST_METHOD", "")
            self.served.record(method, path, environ.get("HTTP_RANGE", ""), sent)


@contextmanager
def serve_s3() -> Iterator[Served]:
    """An S3-compatible server (moto) at ``http://127.0.0.1:PORT``; path-style bucket URLs."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    served = Served(url="")
    app = _Counting(DomainDispatcherApplication(create_backend_app), served)
    with running(make_server("127.0.0.1", 0, app, threaded=True)) as served.url:
        yield served
