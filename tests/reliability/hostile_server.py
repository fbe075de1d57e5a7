"""An upstream that misbehaves on purpose, on 127.0.0.1, over real sockets.

Files come from a real channel folder; ``behaviour[path]`` makes one path
misbehave: ``slow`` (a byte at a time), ``endless`` (a body that never ends),
``redirect`` (to another host name), ``bomb`` (gzip that inflates to 64 MB),
``short`` (fewer bytes than Content-Length), ``garbage`` (random bytes),
``login`` (a 200 HTML page instead of the file).
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


@dataclass
class Hostile:
    url: str
    root: Path
    port: int
    behaviour: dict[str, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state: Hostile = self.server.state
        path = self.path.split("?")[0].lstrip("/")
        mode = state.behaviour.get(path)
        if mode == "redirect" and (self.headers.get("Host") or "").startswith("localhost"):
            mode = None  # arrived at the other host: serve it there
        target = state.root / path
        try:
            if mode is None:
                if not target.is_file():
                    self._plain(404, b"not found")
                else:
                    self._plain(200, target.read_bytes())
            elif mode == "redirect":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{state.port}/{path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "slow":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                while not state.stop.is_set():
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif mode == "endless":
                self.send_response(200)
                self.end_headers()  # no length: the body ends when we close, which is never
                while not state.stop.is_set():
                    self.wfile.write(b"y" * 65536)
            elif mode == "bomb":
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(_BOMB)))
                self.end_headers()
                self.wfile.write(_BOMB)
            elif mode == "short":
                body = target.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + 1000))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
            elif mode == "garbage":
                self._plain(200, os.urandom(4096))
            elif mode == "login":
                self._plain(200, b"<html><form>Please log in</form></html>", "text/html")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _plain(self, status: int, body: bytes, kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def hostile_server(root: Path) -> Iterator[Hostile]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    state = Hostile(f"http://127.0.0.1:{port}", root, port)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
