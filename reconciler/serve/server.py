"""``reconcile serve``: every channel of the configuration over HTTP.

``/<channel>/<subdir>/<file>`` and ``/<channel>/channeldata.json`` with GET and
HEAD, single ``Range`` requests (206), ``ETag`` / ``Last-Modified`` and the
conditional requests that use them (304), and ``Cache-Control`` as clients
expect: index files short-lived, package files and shards immutable. Nothing
outside a channel folder and nothing under ``.reconciler/`` is ever served; no
directory listings but the generated ``index.html``. ``/`` is the status page
and ``/api/status`` its JSON.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reconciler.conda.names import is_safe_package_filename
from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.kinds.pypi import routes as pypi_routes
from reconciler.serve.files import (
    Refused,
    cache_control,
    channel_file,
    content_type,
    inside,
    parse_range,
    split_url_path,
)
from reconciler.serve.passive import FetchFailed, PassiveFetcher
from reconciler.serve.status import render_status_html, status_data

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


class ChannelServer(ThreadingHTTPServer):
    daemon_threads = False  # shutdown waits for requests in flight
    block_on_close = True

    def __init__(self, address: tuple[str, int], loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.channels: dict[str, Channel | PypiChannel] = {
            c.name: c for c in loaded.config.channels
        }
        self.passive = PassiveFetcher(loaded)
        self.access_log: deque[str] = deque(maxlen=1000)  # the last requests, for tests
        self.connections: set[RequestHandler] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def server_close(self) -> None:
        """Close idle keep-alive connections, then wait for requests in flight."""
        with self.connections_lock:
            idle = [h for h in self.connections if not h.busy]
        for handler in idle:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        super().server_close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"


class RequestHandler(BaseHTTPRequestHandler):
    server: ChannelServer
    protocol_version = "HTTP/1.1"
    server_version = "conda-reconcile"
    timeout = 120  # an idle keep-alive connection is dropped after this many seconds
    busy = False

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        line = f"{self.address_string()} - {format % args}"
        self.server.access_log.append(line)
        sys.stderr.write(line + "\n")

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    # -- routing -------------------------------------------------------------------------

    def _handle(self, head: bool) -> None:
        self.busy = True
        try:
            self._route(head)
        finally:
            self.busy = False

    def _route(self, head: bool) -> None:
        self._responded = False  # one handler serves every request of a keep-alive connection
        try:
            segments = split_url_path(self.path)
        except Refused:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        if segments in ([], [""]):
            body = render_status_html(status_data(self.server.loaded)).encode()
            self._bytes(body, "text/html; charset=utf-8", head)
            return
        if segments == ["api", "status"]:
            body = json.dumps(status_data(self.server.loaded), indent=2).encode()
            self._bytes(body, "application/json", head)
            return
        channel = self.server.channels.get(segments[0])
        if channel is None:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        root = Path(channel.path)
        if isinstance(channel, PypiChannel):
            self._route_pypi(channel, segments, head)
            return
        try:
            path = channel_file(root, segments[1:])
        except Refused:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        if not path.is_file():
            fetched, responded = self._passive(channel, path, head)
            if responded:
                return
            path = fetched or path
        if not path.is_file() or not inside(root, path):
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        self._file(path, head)

    def _route_pypi(self, channel: PypiChannel, segments: list[str], head: bool) -> None:
        root = Path(channel.path)
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        target = pypi_routes.route(root, segments[1:], self.headers.get("Accept"), query)
        if isinstance(target, pypi_routes.Redirect):
            self._responded = True
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", f"/{channel.name}/{target.location}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif isinstance(target, pypi_routes.Page):
            self._file(target.path, head, kind=target.content_type, vary="Accept")
        elif isinstance(target, pypi_routes.PackageFile):
            path = target.path
            if not path.is_file():
                try:
                    fetched = self.server.passive.fetch_pypi(
                        channel, target.project, target.filename
                    )
                except FetchFailed as exc:
                    log.error("passive fetch of %s failed: %s", self.path, exc)
                    self._error(HTTPStatus.BAD_GATEWAY, head, str(exc))
                    return
                path = fetched or path
            if not inside(root, path):
                self._error(HTTPStatus.NOT_FOUND, head)
                return
            self._file(path, head)
        else:
            self._error(HTTPStatus(target.status), head)

    def _passive(self, channel: Channel, path: Path, head: bool) -> tuple[Path | None, bool]:
        """(the fetched file, or None; True when a 502 was already sent)."""
        subdir, filename = path.parent.name, path.name
        if not is_safe_package_filename(filename):
            return None, False
        fetcher = self.server.passive
        if not fetcher.is_passive(channel, subdir, filename):
            return None, False  # not in the channel's index: 404; upstream is never asked
        try:
            return fetcher.fetch(channel, subdir, filename), False
        except FetchFailed as exc:
            log.error("passive fetch of %s/%s/%s failed: %s", channel.name, subdir, filename, exc)
            self._error(HTTPStatus.BAD_GATEWAY, head, str(exc))
            return None, True

    # -- responses -----------------------------------------------------------------------

    def _error(self, status: HTTPStatus, head: bool, detail: str | None = None) -> None:
        if getattr(self, "_responded", False):
            return
        self._responded = True
        body = f"{status.value} {status.phrase}\n{detail or ''}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _bytes(self, body: bytes, kind: str, head: bool) -> None:
        self._responded = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(
        self, path: Path, head: bool, kind: str | None = None, vary: str | None = None
    ) -> None:
        if getattr(self, "_responded", False):
            return
        try:
            handle = path.open("rb")
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        with handle:
            st = os.fstat(handle.fileno())
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            if self._not_modified(etag, st.st_mtime):
                self._responded = True
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", etag)
                self.send_header("Cache-Control", cache_control(path))
                self.end_headers()
                return
            start, end, status = 0, st.st_size - 1, HTTPStatus.OK
            wanted = self.headers.get("Range")
            if wanted and (self.headers.get("If-Range") in (None, etag)):
                span = parse_range(wanted, st.st_size)
                if span is None:
                    self._responded = True
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{st.st_size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = span
                status = HTTPStatus.PARTIAL_CONTENT
            self._responded = True
            self.send_response(status)
            self.send_header("Content-Type", kind or content_type(path.name))
            if vary:
                self.send_header("Vary", vary)
            self.send_header("Content-Length", str(max(0, end - start + 1)))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Cache-Control", cache_control(path))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
            self.end_headers()
            if head:
                return
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        match = self.headers.get("If-None-Match")
        if match is not None:
            return etag in [tag.strip() for tag in match.split(",")] or match.strip() == "*"
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                parsed = email.utils.parsedate_to_datetime(since)
            except (TypeError, ValueError):
                return False
            return int(mtime) <= parsed.timestamp()
        return False


def serve(loaded: LoadedConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; requests in flight finish first."""
    server = ChannelServer((host, port), loaded)
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("stopping (signal %d): finishing requests in flight", signum)
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"serving {len(server.channels)} channel(s) on {server.url}/", file=sys.stderr, flush=True
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        _clean_partial_downloads(loaded)


def _clean_partial_downloads(loaded: LoadedConfig) -> None:
    from reconciler.store import open_store

    for channel in loaded.config.channels:
        open_store(channel.path).clean_temporaries()
