"""An HTTP server on 127.0.0.1 that serves a folder and misbehaves on request.

``faults`` maps a URL path to a list of behaviours used one per request, in order
(then the file is served normally): ``"500"``, ``"drop"`` (close the connection
half-way through the body), ``"garbage"`` (200 with junk bytes), ``"404"``, ``"delay"``
(answer normally, a third of a second late).
Conditional requests get a 304 when the ETag matches, like a real server.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, root: Path, state: dict[str, Any], **kwargs: Any) -> None:
        self.root = root
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.state["requests"].append(path)
        queue = self.state["faults"].get(path) or []
        fault = queue.pop(0) if queue else None
        target = (self.root / path.lstrip("/")).resolve()
        if fault == "delay":
            time.sleep(0.3)
            fault = None
        if fault == "500":
            self.send_error(500)
            return
        if fault == "404" or not target.is_file() or self.root.resolve() not in target.parents:
            self.send_error(404)
            return
        data = target.read_bytes()
        if fault == "garbage":
            data = b"\x00not what you asked for" * 10
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag and fault is None:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            self.state["not_modified"].append(path)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.end_headers()
        if fault == "drop":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@contextmanager
def faulty_server(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (base URL, state); state has "faults", "requests" and "not_modified"."""
    state: dict[str, Any] = {"faults": {}, "requests": [], "not_modified": []}
    handler = functools.partial(_Handler, root=root, state=state)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
