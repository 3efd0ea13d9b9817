"""A tiny STAC API for tests: a static STAC tree served over http, with item search.

:func:`serve` starts it on 127.0.0.1 (a free port) in a thread and yields its root URL. It
answers:

* ``/``: a landing page that conforms to STAC API core and item search, linking ``/search``;
* ``/search`` (GET with query parameters, or POST with a JSON body): the tree's items that
  match ``collections``, ``bbox`` and ``datetime``, as one ItemCollection page (no next link),
  each item with an absolute self link so its relative asset hrefs resolve;
* any other path: that file of the tree, so the tree is also a static catalog over http.

``requests_seen`` on the yielded handle lists each request as ``"METHOD /path"``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

from pystac.utils import str_to_datetime

from tests.remote_servers import running

CONFORMS_TO = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
]


@dataclass
class Server:
    """A running server: its root URL and the requests it has answered."""

    url: str
    requests_seen: list[str] = field(default_factory=list)


def _items(root: Path) -> dict[str, dict[str, Any]]:
    """Every item JSON of the tree by its path relative to ``root``."""
    found = {}
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("type") == "Feature":
            found[path.relative_to(root).as_posix()] = data
    return found


def _when(text: str) -> dt.datetime:
    """A time of a query or item, UTC where it names no zone."""
    when = str_to_datetime(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _matches(item: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether an item meets a search's collections, bbox and datetime (no antimeridian)."""
    collections = query.get("collections")
    if collections and item.get("collection") not in collections:
        return False
    bbox = query.get("bbox")
    if bbox:
        w, s, e, n = (float(v) for v in bbox)
        iw, is_, ie, in_ = item["bbox"][:4]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    window = query.get("datetime")
    if window:
        start, _, end = str(window).partition("/")
        end = end or start
        when = _when(item["properties"]["datetime"])
        if start not in ("", "..") and when < _when(start):
            return False
        if end not in ("", "..") and when > _when(end):
            return False
    return True


def _listed(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


class _Handler(BaseHTTPRequestHandler):
    """Answers the landing page, /search and the tree's files; set up by :func:`serve`."""

    root: Path
    server_state: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep test output quiet."""

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: dict[str, Any]) -> None:
        self._send(200, json.dumps(data).encode())

    def _landing(self) -> dict[str, Any]:
        url = self.server_state.url
        search = {"rel": "search", "href": f"{url}/search", "type": "application/geo+json"}
        return {
            "type": "Catalog",
            "id": "test-api",
            "stac_version": "1.1.0",
            "description": "A test STAC API",
            "conformsTo": CONFORMS_TO,
            "links": [
                {"rel": "self", "href": f"{url}/", "type": "application/json"},
                {"rel": "root", "href": f"{url}/", "type": "application/json"},
                search | {"method": "GET"},
                search | {"method": "POST"},
            ],
        }

    def _search(self, query: dict[str, Any]) -> None:
        url = self.server_state.url
        features = []
        for relative, item in _items(self.root).items():
            if _matches(item, query):
                self_href = f"{url}/{relative}"
                links = [
                    link | {"href": urljoin(self_href, link["href"])}
                    for link in item.get("links", [])
                    if link.get("rel") != "self"
                ]
                features.append(item | {"links": [*links, {"rel": "self", "href": self_href}]})
        self._json(
            {
                "type": "FeatureCollection",
                "features": features,
                "numberReturned": len(features),
                "links": [{"rel": "self", "href": f"{url}/search"}],
            }
        )

    def do_GET(self) -> None:  # noqa: N802
        """The landing page, a GET search, or a file of the tree."""
        parsed = urlparse(self.path)
        self.server_state.requests_seen.append(f"GET {parsed.path}")
        if parsed.path == "/":
            self._json(self._landing())
        elif parsed.path == "/search":
            params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
            query: dict[str, Any] = {"datetime": params.get("datetime")}
            query["collections"] = _listed(params.get("collections", ""))
            query["bbox"] = _listed(params.get("bbox", ""))
            self._search(query)
        else:
            file = (self.root / parsed.path.lstrip("/")).resolve()
            if file.is_file() and file.is_relative_to(self.root.resolve()):
                self._send(200, file.read_bytes(), "application/octet-stream")
            else:
                self._send(404, b'{"code": "NotFound"}')

    def do_POST(self) -> None:  # noqa: N802
        """A POST search with a JSON body."""
        parsed = urlparse(self.path)
        self.server_state.requests_seen.append(f"POST {parsed.path}")
        if parsed.path != "/search":
            self._send(404, b'{"code": "NotFound"}')
            return
        length = int(self.headers.get("Content-Length", 0))
        self._search(json.loads(self.rfile.read(length) or b"{}"))


@contextmanager
def serve(root: Path) -> Iterator[Server]:
    """Serve the STAC tree at ``root`` as a STAC API until the block ends."""
    state = Server(url="")
    handler = type("Handler", (_Handler,), {"root": root, "server_state": state})
    with running(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as state.url:
        yield state
