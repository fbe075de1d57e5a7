"""An HTTP server on 127.0.0.1 that misbehaves on purpose, at the socket level.

It serves the files of a folder (a conda channel, say) like a plain static server
(``ETag``, ``304`` on ``If-None-Match``, keep-alive), except for the paths given a
behaviour in ``server.behaviours``: a path (without the leading ``/``) maps to a
behaviour name, used for every request, or to a list of names, used one per
request and then the file is served normally.

Responses are written by hand on the raw socket, so the server can do what
``http.server`` would not: stall half-way through its headers, send more or fewer
bytes than its ``Content-Length``, or never end a body. "Forever" and "never" mean
:data:`GIVE_UP` seconds, so a client that does not cut them off fails a test
instead of hanging it.

Behaviours:

``slow-headers``   status line, then one header byte every ``DRIBBLE`` seconds, "forever"
``silent``         reads the request and never answers
``slow-body``      right headers, then the file one byte every ``DRIBBLE`` seconds
``endless``        200 without a length, a body that never ends
``endless-chunked``  the same with ``Transfer-Encoding: chunked``
``long-length``    ``Content-Length`` larger than the body, then the connection closes
``short-length``   ``Content-Length`` half the body, then the whole body (keep-alive: the
                   rest arrives where the next response should start)
``odd-length``     ``Content-Length: ²`` (no number), the whole body, then the connection closes
``gzip-bomb``      ``Content-Encoding: gzip``, ~4 MB that inflate to ``BOMB_BYTES``
                   (sent whatever ``Accept-Encoding`` says)
``zstd-bomb``      a 128 kB zstd frame that decompresses to ``BOMB_BYTES`` of zeros
``zstd-encoded-bomb``  the same frame as ``Content-Encoding: zstd``
``garbage``        200 with random bytes
``html``           200 ``text/html`` login page
``reset``          headers and half the body, then a TCP reset
``500`` / ``404``  that status
``redirect-localhost``  302 to the same path on ``localhost`` (served there normally)
``redirect-foreign``    302 to ``127.0.0.2`` (nothing listens there)
``redirect-same``       302 to a relative URL on this host that serves the file
``redirect-loop``       302 to itself, forever
``redirect-file``       302 to ``file:///etc/passwd``
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

DRIBBLE = 0.25  # seconds between the bytes of a slow response
# A slow or endless answer gives up after this long, so a client that fails to cut
# it off makes a test fail (on its time limit) instead of hanging.
GIVE_UP = 15.0
BOMB_BYTES = 4 * 1024 * 1024 * 1024  # what a bomb inflates to
_BOMB_PIECE = 64 * 1024 * 1024
ALIAS = "~alias/"  # redirect-same sends here; it serves the file after the prefix
LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action=/login>Please log in</form></body></html>"


@functools.cache
def gzip_bomb() -> bytes:
    """Gzip members of 64 MB of zeros, concatenated (a valid gzip stream)."""
    member = gzip.compress(b"\0" * _BOMB_PIECE, compresslevel=9)
    return member * (BOMB_BYTES // _BOMB_PIECE)


@functools.cache
def zstd_bomb() -> bytes:
    """One zstd frame of :data:`BOMB_BYTES` zeros: RLE blocks of 128 kB, 4 bytes each."""
    block = 128 * 1024
    # Magic, a frame header without content size or checksum, a 128 kB window.
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")
    count = BOMB_BYTES // block
    for number in range(count):
        last = 1 if number == count - 1 else 0
        header = last | (1 << 1) | (block << 3)  # Block_Type 1: RLE, of `block` bytes
        frame += header.to_bytes(3, "little") + b"\0"
    return bytes(frame)


@dataclass
class HostileServer:
    root: Path
    port: int
    behaviours: dict[str, str | list[str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # paths, in order of arrival
    stop: threading.Event = field(default_factory=threading.Event)
    _connections: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _behaviour(self, path: str) -> str | None:
        with self._lock:
            self.requests.append(path)
            chosen = self.behaviours.get(path)
            if isinstance(chosen, list):
                return chosen.pop(0) if chosen else None
            return chosen

    # -- one connection ----------------------------------------------------------

    def serve_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
        try:
            buffered = b""
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data or len(buffered) > 65536:
                        return
                    buffered += data
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if not self.respond(conn, target, headers):
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(conn)
            with suppress(OSError):
                conn.close()

    def respond(self, conn: socket.socket, target: str, headers: dict[str, str]) -> bool:
        """Answer one request; False when the connection is to be closed."""
        path = target.split("?", 1)[0].lstrip("/")
        behaviour = self._behaviour(path)
        if path.startswith(ALIAS):
            path = path[len(ALIAS) :]
        host = headers.get("host", "")
        if behaviour == "redirect-localhost" and host.startswith("localhost"):
            behaviour = None  # arrived at the other host name: it serves the file
        file = (self.root / path).resolve()
        inside = self.root.resolve() in file.parents and file.is_file()
        body = file.read_bytes() if inside else b""

        def head(status: str, *extra: str, length: int | None = None) -> bytes:
            lines = [f"HTTP/1.1 {status}", *extra]
            if length is not None:
                lines.append(f"Content-Length: {length}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        if behaviour is None:
            if not inside:
                conn.sendall(head("404 Not Found", length=9) + b"not found")
                return True
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if headers.get("if-none-match") == etag:
                conn.sendall(head("304 Not Modified", f"ETag: {etag}"))
                return True
            kind = "application/json" if path.endswith(".json") else "application/octet-stream"
            conn.sendall(
                head("200 OK", f"Content-Type: {kind}", f"ETag: {etag}", length=len(body)) + body
            )
            return headers.get("connection", "").lower() != "close"
        if behaviour in ("500", "404"):
            reason = "Internal Server Error" if behaviour == "500" else "Not Found"
            conn.sendall(head(f"{behaviour} {reason}", length=0))
            return True
        if behaviour and behaviour.startswith("redirect-"):
            location = {
                "redirect-localhost": f"http://localhost:{self.port}/{path}",
                "redirect-foreign": f"http://127.0.0.2:{self.port}/{path}",
                "redirect-same": f"/{ALIAS}{path}",
                "redirect-loop": f"/{path}?hop={len(self.requests)}",
                "redirect-file": "file:///etc/passwd",
            }[behaviour]
            conn.sendall(head("302 Found", f"Location: {location}", length=0))
            return True
        deadline = time.monotonic() + GIVE_UP
        if behaviour == "slow-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            while not self.stop.wait(DRIBBLE) and time.monotonic() < deadline:
                conn.sendall(b"a")
            return False
        if behaviour == "silent":
            self.stop.wait(GIVE_UP)
            return False
        if behaviour == "slow-body":
            conn.sendall(head("200 OK", length=len(body)))
            for byte in body:
                if self.stop.wait(DRIBBLE) or time.monotonic() > deadline:
                    break
                conn.sendall(bytes([byte]))
            return False
        if behaviour == "endless":
            conn.sendall(head("200 OK", "Content-Type: application/json", "Connection: close"))
            while not self.stop.is_set() and time.monotonic() < deadline:
                conn.sendall(b" " * 65536)
            return False
        if behaviour == "endless-chunked":
            conn.sendall(head("200 OK", "Transfer-Encoding: chunked"))
            while not self.stop.is_set() and time.monotonic() < deadline:
                conn.sendall(b"10000\r\n" + b" " * 65536 + b"\r\n")
            return False
        if behaviour == "long-length":
            conn.sendall(head("200 OK", length=len(body) + 1000) + body)
            return False
        if behaviour == "short-length":
            conn.sendall(head("200 OK", length=len(body) // 2) + body)
            return True
        if behaviour == "odd-length":
            # "²" is a digit to str.isdigit but no number to int(): a length that is
            # none, and the body runs to the close.
            conn.sendall(head("200 OK", "Content-Length: \u00b2") + body)
            return False
        if behaviour == "gzip-bomb":
            bomb = gzip_bomb()
            conn.sendall(head("200 OK", "Content-Encoding: gzip", length=len(bomb)) + bomb)
            return True
        if behaviour == "zstd-bomb":
            bomb = zstd_bomb()
            conn.sendall(head("200 OK", length=len(bomb)) + bomb)
            return True
        if behaviour == "zstd-encoded-bomb":
            bomb = zstd_bomb()
            conn.sendall(head("200 OK", "Content-Encoding: zstd", length=len(bomb)) + bomb)
            return True
        if behaviour == "garbage":
            junk = os.urandom(4096)
            conn.sendall(head("200 OK", length=len(junk)) + junk)
            return True
        if behaviour == "html":
            kind = "Content-Type: text/html; charset=utf-8"
            conn.sendall(head("200 OK", kind, length=len(LOGIN_PAGE)) + LOGIN_PAGE)
            return True
        if behaviour == "reset":
            conn.sendall(head("200 OK", length=len(body)) + body[: len(body) // 2])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        raise ValueError(f"unknown behaviour {behaviour!r}")

    # -- life cycle --------------------------------------------------------------

    def close_all(self) -> None:
        self.stop.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextmanager
def hostile_server(root: Path) -> Iterator[HostileServer]:
    """Serve ``root`` on 127.0.0.1 (a random port) from a background thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    server = HostileServer(root, listener.getsockname()[1])

    def accept_loop() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=server.serve_connection, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close_all()
        thread.join()
        listener.close()
