"""An upstream simple index on 127.0.0.1, written independently of the code under test.

Serves ``/simple/<project>/`` as PEP 691 JSON or PEP 503 HTML by ``Accept`` (or
HTML only, like an old index), files under ``/files/``, and PEP 658 metadata
for wheels. Tests change ``files`` between runs; every request is recorded.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass
class Offered:
    path: Path
    project: str
    yanked: bool | str = False
    requires_python: str | None = None
    upload_time: str | None = None  # ISO 8601, e.g. "2024-03-01T00:00:00Z"


@dataclass
class Upstream:
    url: str
    files: list[Offered]
    html_only: bool = False
    requests: list[str] = field(default_factory=list)
    wrong_hash: set[str] = field(default_factory=set)  # filenames whose page hash lies
    files_base: str = ""  # e.g. "http://localhost:PORT": file URLs on another host


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel_metadata(path: Path) -> bytes | None:
    if not path.name.endswith(".whl"):
        return None
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        self.server.state.requests.append(self.path)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state: Upstream = self.server.state
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple":
            offered = [f for f in state.files if f.project == parts[1]]
            if not offered:
                self._send(404, b"not found", "text/plain")
            elif not state.html_only and JSON_TYPE in (self.headers.get("Accept") or ""):
                self._send(200, self._json(parts[1], offered), JSON_TYPE)
            else:
                self._send(200, self._html(offered), "text/html")
            return
        if len(parts) == 2 and parts[0] == "files":
            for item in state.files:
                metadata = _wheel_metadata(item.path)
                if parts[1] == item.path.name:
                    self._send(200, item.path.read_bytes(), "application/octet-stream")
                    return
                if parts[1] == item.path.name + ".metadata" and metadata is not None:
                    self._send(200, metadata, "text/plain")
                    return
        self._send(404, b"not found", "text/plain")

    def _hash(self, item: Offered) -> str:
        if item.path.name in self.server.state.wrong_hash:
            return _sha(b"something else")
        return _sha(item.path.read_bytes())

    def _json(self, project: str, offered: list[Offered]) -> bytes:
        files = []
        for item in offered:
            entry: dict[str, Any] = {
                "filename": item.path.name,
                "url": f"{self.server.state.files_base}/files/{item.path.name}",
                "hashes": {"sha256": self._hash(item)},
                "size": item.path.stat().st_size,
                "yanked": item.yanked,
            }
            if item.requires_python:
                entry["requires-python"] = item.requires_python
            if item.upload_time:
                entry["upload-time"] = item.upload_time
            metadata = _wheel_metadata(item.path)
            entry["core-metadata"] = {"sha256": _sha(metadata)} if metadata else False
            files.append(entry)
        page = {"meta": {"api-version": "1.1"}, "name": project, "files": files, "versions": []}
        return json.dumps(page).encode()

    def _html(self, offered: list[Offered]) -> bytes:
        anchors = []
        for item in offered:
            attrs = f' href="/files/{item.path.name}#sha256={self._hash(item)}"'
            if item.requires_python:
                attrs += f' data-requires-python="{html.escape(item.requires_python)}"'
            if item.yanked is not False:
                reason = item.yanked if isinstance(item.yanked, str) else ""
                attrs += f' data-yanked="{html.escape(reason)}"'
            anchors.append(f"<a{attrs}>{item.path.name}</a><br/>")
        return ("<!DOCTYPE html><html><body>" + "\n".join(anchors) + "</body></html>").encode()


@contextmanager
def simple_index(files: list[Offered], html_only: bool = False) -> Iterator[Upstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = Upstream(f"http://127.0.0.1:{server.server_address[1]}/simple/", files, html_only)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
