"""``reconcile serve``: every channel of the configuration over HTTP.

An asynchronous server (aiohttp's low-level server: one event loop, no thread
per connection). Files go out with ``sendfile``; ``/<channel>/<subdir>/<file>``
and ``/<channel>/channeldata.json`` with GET and HEAD, single ``Range`` requests
(206/416), ``ETag`` / ``Last-Modified`` and the conditional requests that use
them (304), and ``Cache-Control`` as clients expect: index files short-lived,
package files and shards immutable. Nothing outside a channel folder, nothing
under ``.reconciler/`` and no package the published index does not list is ever
served; no directory listings but the generated ``index.html``.

A channel in a bucket (``s3://``) is served through its store: objects are
streamed (``Range`` and conditional requests answered from a ``HEAD``, the bytes
read with ``If-Match`` the ETag the headers describe), or, with ``storage.serve:
redirect``, clients are sent to a presigned URL. The published index is checked
the same way, through the store.

``/`` is the status page, ``/api/status`` its JSON and ``/metrics`` Prometheus'
text format. Private channels need a read token (:mod:`reconciler.serve.auth`).
Anything that blocks (a passive fetch, parsing an index after a publish,
hashing, reading the run history) runs in worker threads, never on the loop.
``SIGHUP`` re-reads the configuration; ``SIGTERM`` lets requests in flight
finish and closes idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from reconciler.conda.names import package_suffix
from reconciler.config.models import Channel, LoadedConfig, PypiChannel, load_config
from reconciler.errors import ConfigError, ReconcileError
from reconciler.kinds.pypi import routes as pypi_routes
from reconciler.kinds.pypi.simple_index import SIMPLE
from reconciler.serve import auth, views
from reconciler.serve.files import (
    Refused,
    cache_control,
    channel_relative,
    content_type,
    open_inside,
    parse_range,
    resolve_inside,
    split_url_path,
    stat_inside,
)
from reconciler.serve.listing import (
    Listings,
    Parser,
    StoreListings,
    conda_packages,
    conda_shards,
    pypi_files,
)
from reconciler.serve.metrics import ServeMetrics
from reconciler.serve.packages import PackageListings
from reconciler.serve.passive import FetchFailed, PassiveFetcher
from reconciler.serve.shared import Shared
from reconciler.serve.status import redact_status, render_status_html, status_data
from reconciler.store import channel_store
from reconciler.store.base import PreconditionFailed, StorageError, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVER = "conda-reconcile"
# Files a subdir may serve besides the packages its repodata lists.
SUBDIR_FILES = frozenset(
    {
        "repodata.json",
        "repodata.json.zst",
        "repodata.json.bz2",
        "repodata_from_packages.json",
        "repodata_from_packages.json.zst",
        "repodata_from_packages.json.bz2",
        "current_repodata.json",
        "current_repodata.json.zst",
        "current_repodata.json.bz2",
        "run_exports.json",
        "run_exports.json.zst",
        "repodata_shards.msgpack.zst",
        "index.html",
    }
)
# URL paths whose parsed segments are kept (the set is emptied when full).
SEGMENTS_KEPT = 4096
KEEPALIVE_TIMEOUT = 120  # an idle keep-alive connection is dropped after this many seconds
# nginx reads an upstream's headers into proxy_buffer_size (4 KB by default): a longer
# X-Accel-Redirect would be its 502, so such a file is sent from here.
ACCEL_LIMIT = 3000
# First path segments the server routes itself: an nginx location there would hide them.
ROUTES = frozenset({auth.TOKEN_PREFIX, "api", "metrics", views.VIEWS})


@dataclass
class ServeOptions:
    """How ``reconcile serve`` runs (its command-line options)."""

    access_log: str | None = None  # a file, "-" for stderr, None for none
    behind_proxy: bool = False  # a TLS terminator is in front
    watch_config: bool = False  # reload when the file changes
    failed_fetch_ttl: float | None = None  # overrides serve.failed_fetch_ttl
    backlog: int = 1024
    shutdown_timeout: float = 60.0
    watch_interval: float = 1.0
    fetch_workers: int = 16
    workers: int = 1  # server processes answering on the one port
    # nginx's internal location for files: once checked, a file is handed to nginx with
    # X-Accel-Redirect (its real path after this prefix) instead of sent from here
    accel_redirect: str | None = None


@dataclass
class _Snapshot:
    """One configuration, replaced whole on reload (requests keep the one they started with)."""

    loaded: LoadedConfig
    channels: dict[str, Channel | PypiChannel] = field(init=False)
    roots: dict[str, str] = field(init=False)  # real paths of the channel folders
    stores: dict[str, Store] = field(init=False)  # channels in a bucket
    tokens: auth.TokenTable = field(init=False)

    def __post_init__(self) -> None:
        channels = self.loaded.config.channels
        self.channels = {c.name: c for c in channels}
        self.roots = {
            c.name: os.path.realpath(c.path) for c in channels if isinstance(c.path, Path)
        }
        self.stores = {c.name: channel_store(c) for c in channels if not isinstance(c.path, Path)}
        self.tokens = auth.TokenTable(self.loaded.config)

    @property
    def private(self) -> list[str]:
        return [c.name for c in self.channels.values() if c.access == "private"]


@dataclass(slots=True)
class _Exchange:
    """What one request was, for the metrics and the access log."""

    channel: str = ""
    kind: str = "other"
    user: str = "-"
    sent: int = 0
    aborted: bool = False  # the client left before the response was complete


class AccessLog:
    """Buffered access log lines (no tokens: ``/t/<token>/`` is redacted, headers never).

    Lines are written whole, a batch per ``write`` on a file opened for appending, so
    the processes of one server can share the file without tearing each other's lines.
    """

    FLUSH_AT = 1 << 16  # characters buffered before a flush (also every second)

    def __init__(self, target: str) -> None:
        self._own = target != "-"
        self._fd = (
            os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if self._own
            else sys.stderr.fileno()
        )
        self._lines: list[str] = []
        self._size = 0

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "backslashreplace")
        self._lines.clear()
        self._size = 0
        with contextlib.suppress(OSError):  # a full disk must not stop the server
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        self.flush()
        if self._own:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._own = False


def _plain(
    status: int, detail: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n{detail or ''}\n"
    response = web.Response(status=status, text=body, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


_Entry = tuple[str | None, str, str, Any, "_Exchange", int, float]


def _log_line(
    remote: str | None,
    method: str,
    raw_path: str,
    version: Any,
    exchange: _Exchange,
    status: int,
    elapsed: float,
) -> str:
    """One access log line; the token of a ``/t/<token>/`` URL is never written."""
    return (
        f'{remote} {exchange.user} "{method} {auth.redact_path(raw_path)} '
        f'HTTP/{version.major}.{version.minor}" {status} {exchange.sent} {elapsed * 1000:.1f}ms'
    )


def _below(root: str, path: Path) -> str:
    """``path`` (under ``root``) relative to ``root``."""
    return os.fspath(path)[len(root) + 1 :]


def _relative(root: str | None, path: Path) -> str:
    """A routed file relative to its channel: below the folder, or the key in a bucket."""
    return _below(root, path) if root is not None else path.as_posix()


_STAMP: list[Any] = [-1, ""]  # (second, its access log time stamp)


def _log_stamp() -> str:
    """The access log's time stamp, formatted once per second."""
    now = int(time.time())
    if _STAMP[0] != now:
        _STAMP[:] = [now, time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))]
    stamp: str = _STAMP[1]
    return stamp


_DATES: dict[int, str] = {}


def _http_date(mtime: float) -> str:
    seconds = int(mtime)
    text = _DATES.get(seconds)
    if text is None:
        if len(_DATES) > 4096:
            _DATES.clear()
        text = _DATES[seconds] = email.utils.formatdate(seconds, usegmt=True)
    return text


def _not_modified(request: web.BaseRequest, etag: str, mtime: float) -> bool:
    match = request.headers.get("If-None-Match")
    if match is not None:
        if match == etag:  # what clients send back: the one tag they were given
            return True
        return match.strip() == "*" or etag in [tag.strip() for tag in match.split(",")]
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        return int(mtime) <= parsed.timestamp()
    return False


def _if_range_holds(value: str | None, etag: str, mtime: float) -> bool:
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == etag
    try:
        return int(mtime) <= email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return False


class ServeApp:
    """Routing, access control, files and pages; shared by every connection."""

    def __init__(
        self,
        loaded: LoadedConfig,
        options: ServeOptions | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.options = options or ServeOptions()
        self.shared = shared  # None: the only process of this server
        self.snapshot = _Snapshot(loaded)
        self.metrics = ServeMetrics(lambda: self.snapshot.loaded, shared)
        self.passive = PassiveFetcher(
            loaded,
            failed_fetch_ttl=self.options.failed_fetch_ttl,
            observer=self.metrics,
            shared=shared,
        )
        self.listings = Listings()
        self.object_listings = StoreListings()
        self.package_listings = PackageListings()  # the channel pages' package lists
        self._recent: deque[_Entry] = deque(maxlen=200)
        self.access_log = AccessLog(self.options.access_log) if self.options.access_log else None
        self.fetch_pool = ThreadPoolExecutor(
            max_workers=self.options.fetch_workers, thread_name_prefix="reconcile-fetch"
        )
        self.work_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reconcile-work")
        # Requests to buckets block on the network: a pool of their own.
        self.object_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="reconcile-s3")
        self._flights: dict[tuple[str, ...], tuple[asyncio.Future[Any], list[int]]] = {}
        self._segments: dict[str, tuple[str, ...]] = {}  # URL path -> its checked segments
        self._config_key = self._stat_config()

    # -- configuration -------------------------------------------------------------------

    def _stat_config(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.snapshot.loaded.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def reload(self) -> bool:
        """Re-read the configuration (blocking); keep the current one if the file is invalid."""
        path = self.snapshot.loaded.path
        self._config_key = self._stat_config()
        try:
            loaded = load_config(path, serving=True)
        except ConfigError as exc:
            log.error("%s not reloaded; still serving the previous configuration:\n%s", path,
                      exc.message)  # fmt: skip
            return False
        clash = accel_clash(self.options.accel_redirect, loaded)
        if clash:
            log.error("%s not reloaded; still serving the previous configuration: %s", path, clash)
            return False
        for diagnostic in loaded.warnings:
            log.warning("%s", diagnostic.format())
        snapshot = _Snapshot(loaded)
        self.passive.reconfigure(loaded)
        self.snapshot = snapshot
        log.info("reloaded %s: serving %d channel(s)", path, len(snapshot.channels))
        return True

    def config_changed(self) -> bool:
        return self._stat_config() != self._config_key

    def sweep(self) -> None:
        """Delete unpublished files whose grace period is over (blocking)."""
        from reconciler.engine.deletions import sweep_channels
        from reconciler.kinds import REGISTRY

        for name, count in sweep_channels(self.snapshot.loaded, REGISTRY).items():
            log.info("channel %s: deleted %d unpublished file(s), grace period over", name, count)

    # -- helpers ---------------------------------------------------------------------------

    async def _in_thread(
        self, function: Callable[[], T], pool: ThreadPoolExecutor | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self.work_pool, function)

    async def _single_flight(
        self, key: tuple[str, ...], function: Callable[[], T]
    ) -> tuple[T, int]:
        """Run ``function`` once for every concurrent caller with ``key``.

        Returns (its result, how many callers waited on another's run: 0 for the first).
        """
        flight = self._flights.get(key)
        if flight is not None:
            flight[1][0] += 1
            return await asyncio.shield(flight[0]), 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.run_in_executor(self.fetch_pool, function)
        waiting = [0]
        self._flights[key] = (future, waiting)
        try:
            return await asyncio.shield(future), 0
        finally:
            self._flights.pop(key, None)

    async def _listed(self, index: str, parse: Parser) -> frozenset[str]:
        names = self.listings.cached(index)
        if names is not None:
            return names
        loaded, _ = await self._single_flight(
            ("index", index), lambda: self.listings.load(index, parse)
        )
        return loaded

    async def _names(
        self, channel: Channel | PypiChannel, root: str | None, key: str, parse: Parser, name: str
    ) -> bool:
        """Whether the channel's index file ``key`` lists ``name`` now."""
        if root is not None:
            return name in await self._listed(f"{root}/{key}", parse)
        store = self.snapshot.stores[channel.name]
        names = self.object_listings.cached(store, key)
        if names is not None and name in names:
            return True
        # Not checked lately, or a name it did not list: look at the index again.
        loaded, _ = await self._single_flight(
            ("objects", store.describe(key)), lambda: self.object_listings.load(store, key, parse)
        )
        return name in loaded

    async def _current(self, channel: Channel | PypiChannel, key: str, stored: str) -> bool:
        """:meth:`PassiveFetcher.current` (in a thread for a bucket: it asks the server)."""
        if not isinstance(channel.path, Path):
            return await self._in_thread(
                lambda: self.passive.current(channel, key, stored), self.object_pool
            )
        return self.passive.current(channel, key, stored)

    # -- the handler -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = _Exchange()
        status = 500
        try:
            response = await self._route(request, exchange)
            status = 499 if exchange.aborted else response.status  # 499: as nginx logs it
            if not response.prepared:
                response.headers.setdefault("Server", SERVER)
            return response
        finally:
            self._record(request, exchange, status, started)

    def _record(
        self, request: web.BaseRequest, exchange: _Exchange, status: int, started: float
    ) -> None:
        self.metrics.request(exchange.channel, exchange.kind, status, exchange.sent)
        elapsed = time.perf_counter() - started
        entry = (
            request.remote,
            request.method,
            request.raw_path,
            request.version,
            exchange,
            status,
            elapsed,
        )
        self._recent.append(entry)
        if self.access_log is not None:
            self.access_log.write(f"{_log_stamp()} {_log_line(*entry)}")

    @property
    def recent(self) -> list[str]:
        """The last requests as access log lines (tests, debugging)."""
        return [_log_line(*entry) for entry in list(self._recent)]

    async def _route(self, request: web.BaseRequest, exchange: _Exchange) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _plain(405, headers={"Allow": "GET, HEAD"})
        head = request.method == "HEAD"
        raw = request.raw_path
        known = self._segments.get(raw)
        if known is not None:
            segments = list(known)
        else:
            try:
                segments = split_url_path(raw)
            except Refused:
                return _plain(404)
            # Parsed once per URL; never one with a token in it (no secrets kept around).
            if not raw.startswith(f"/{auth.TOKEN_PREFIX}/"):
                if len(self._segments) >= SEGMENTS_KEPT:
                    self._segments.clear()
                self._segments[raw] = tuple(segments)
        snapshot = self.snapshot
        token, segments = auth.split_token(segments)
        presented = token if token is not None else auth.header_token(
            request.headers.get("Authorization")
        )  # fmt: skip
        grant = snapshot.tokens.check(presented) if presented is not None else auth.ANONYMOUS
        if grant.valid:
            exchange.user = "+".join(grant.names)
        prefix = "" if token is None else f"/{auth.TOKEN_PREFIX}/{token}"
        if token is not None and not segments:
            raise web.HTTPMovedPermanently(location=f"{prefix}/")

        if segments in ([], [""]):
            exchange.kind = "status"
            return await self._status_page(request, snapshot, grant, exchange, html=True)
        if segments == ["api", "status"]:
            exchange.kind = "status"
            return await self._status_page(request, snapshot, grant, exchange, html=False)
        if segments[:1] == [views.VIEWS]:  # the admin views: /-/mirrors, /-/channel/<name>, ...
            exchange.kind = "status"
            query = {k: v for k, v in request.query.items()}
            answer = await self._in_thread(
                lambda: views.respond(
                    snapshot.loaded, grant, segments[1:], query, self.package_listings
                )
            )
            exchange.sent = len(answer.body)
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        if segments == ["metrics"]:
            exchange.kind = "metrics"
            body = await self._in_thread(self.metrics.render)
            exchange.sent = len(body)
            return web.Response(
                body=body,
                headers={
                    "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                    "Cache-Control": "no-store",
                },
            )

        channel = snapshot.channels.get(segments[0])
        if channel is None:
            return _plain(404)
        exchange.channel = channel.name
        exchange.kind = "pypi" if isinstance(channel, PypiChannel) else "conda"
        if channel.access == "private":
            if not grant.presented:
                return _plain(401, "this channel needs a token", auth.challenge())
            if channel.name not in grant.channels:
                return _plain(403, "the token given does not grant this channel")
        root = snapshot.roots.get(channel.name)  # None: a channel in a bucket
        if isinstance(channel, PypiChannel):
            return await self._pypi(request, channel, root, segments[1:], prefix, head, exchange)
        return await self._conda(request, channel, root, segments[1:], head, exchange)

    async def _status_page(
        self,
        request: web.BaseRequest,
        snapshot: _Snapshot,
        grant: auth.Grant,
        exchange: _Exchange,
        *,
        html: bool,
    ) -> web.Response:
        status = await self._in_thread(lambda: status_data(snapshot.loaded))
        status = redact_status(status, snapshot.private, grant.channels)
        if html:
            body = render_status_html(status, snapshot.loaded).encode()
            kind = "text/html; charset=utf-8"
        else:
            body = json.dumps(status, indent=2).encode()
            kind = "application/json"
        exchange.sent = len(body)
        return web.Response(body=body, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    async def _conda(
        self,
        request: web.BaseRequest,
        channel: Channel,
        root: str | None,
        rest: list[str],
        head: bool,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        try:
            relative = channel_relative(rest)
        except Refused:
            return _plain(404)
        if len(rest) == 2 and rest[1] != "":
            subdir, filename = rest
            if package_suffix(filename) is not None:
                index = f"{subdir}/repodata.json"
                if not await self._names(channel, root, index, conda_packages, filename):
                    return _plain(404)  # stored or not: the index does not name it
                if not await self._current(channel, relative, relative):
                    failed = await self._fetch(
                        ("conda", channel.name, relative),
                        channel,
                        lambda: self.passive.fetch(channel, subdir, filename),
                    )
                    if failed is not None:
                        return failed
            elif filename not in SUBDIR_FILES:
                return _plain(404)
        elif len(rest) == 3 and rest[1] == "shards":
            shards = f"{rest[0]}/repodata_shards.msgpack.zst"
            if not await self._names(channel, root, shards, conda_shards, rest[2]):
                return _plain(404)
        return await self._send(request, channel, root, relative, head, exchange)

    async def _fetch(
        self,
        key: tuple[str, ...],
        channel: Channel | PypiChannel,
        function: Callable[[], str | None],
    ) -> web.Response | None:
        """Fetch a passive file (one download per file); a 502 response when it failed."""
        try:
            _, waited = await self._single_flight(key, function)
        except FetchFailed as exc:
            if exc.retry_after is None:
                log.error("passive fetch of %s/%s failed: %s", channel.name, key[-1], exc)
            headers = (
                {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
            )
            return _plain(502, str(exc), headers)
        if waited:  # served the file another request fetched: a hit, as the stats count them
            await self._in_thread(lambda: self.passive.count(channel, hits=1))
        return None

    async def _pypi(
        self,
        request: web.BaseRequest,
        channel: PypiChannel,
        root: str | None,
        rest: list[str],
        prefix: str,
        head: bool,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        accept = request.headers.get("Accept")
        base = Path(root) if root is not None else Path(".")  # keys, for a bucket
        target = pypi_routes.route(base, rest, accept, request.query_string)
        if isinstance(target, pypi_routes.Redirect):
            location = f"{prefix}/{channel.name}/{target.location}"
            return web.Response(
                status=301, headers={"Location": location, "Cache-Control": "no-store"}
            )
        if isinstance(target, pypi_routes.Page):
            return await self._send(
                request, channel, root, _relative(root, target.path), head, exchange,
                kind=target.content_type, vary="Accept",
            )  # fmt: skip
        if isinstance(target, pypi_routes.PackageFile):
            page = f"{SIMPLE}/{target.project}/index.json"
            if not await self._names(channel, root, page, pypi_files, target.filename):
                return _plain(404)
            key = f"{target.project}/{target.filename}"
            stored = _relative(root, target.path)
            if not await self._current(channel, key, stored):
                failed = await self._fetch(
                    ("pypi", channel.name, key),
                    channel,
                    lambda: self.passive.fetch_pypi(channel, target.project, target.filename),
                )
                if failed is not None:
                    return failed
            # A file under its name never changes (an index lists its hash).
            return await self._send(request, channel, root, stored, head, exchange, immutable=True)
        return _plain(target.status)

    # -- files -----------------------------------------------------------------------------

    async def _send(
        self,
        request: web.BaseRequest,
        channel: Channel | PypiChannel,
        root: str | None,
        relative: str,
        head: bool,
        exchange: _Exchange,
        *,
        kind: str | None = None,
        vary: str | None = None,
        immutable: bool = False,
    ) -> web.StreamResponse:
        control = cache_control(
            relative, channel.max_age, private=channel.access == "private", immutable=immutable
        )
        accel = self.options.accel_redirect
        # Only a request nginx passed on says it takes the file back (nginx sets the header
        # over any a client sent); anyone reaching this server directly gets the bytes.
        if (
            accel
            and root is not None
            and kind is None
            and vary is None
            and request.headers.get("X-Sendfile-Type") == "X-Accel-Redirect"
        ):
            handed = self._hand_to_proxy(root, relative, control, accel)
            if handed is not None:
                return handed
        if root is None:
            return await self._send_object(
                request, channel, relative, head, exchange, control, kind=kind, vary=vary
            )
        return await self._send_file(
            request, root, relative, head, exchange, control, kind=kind, vary=vary
        )

    def _hand_to_proxy(
        self, root: str, relative: str, control: str, prefix: str
    ) -> web.Response | None:
        """An empty answer naming the file for nginx to send (``X-Accel-Redirect``): the
        checks made here, nginx's ``sendfile``, ranges and revalidation there. None: a
        path too long for nginx's header buffer, sent from here instead."""
        # The real path, so nginx (``disable_symlinks on``) follows no link of its own;
        # quoted byte by byte (a folder name need not be UTF-8), nginx unquotes it.
        found = resolve_inside(root, relative)
        if found is None or not stat.S_ISREG(found[0].st_mode):
            return _plain(404)
        target = prefix.rstrip("/") + urllib.parse.quote(os.fsencode(found[1]))
        if len(target) > ACCEL_LIMIT:
            return None
        return web.Response(
            headers={
                "X-Accel-Redirect": target,
                "Content-Type": content_type(relative.rsplit("/", 1)[-1]),
                "Cache-Control": control,
            }
        )

    async def _send_object(
        self,
        request: web.BaseRequest,
        channel: Channel | PypiChannel,
        relative: str,
        head: bool,
        exchange: _Exchange,
        control: str,
        *,
        kind: str | None = None,
        vary: str | None = None,
        attempts: int = 2,
    ) -> web.StreamResponse:
        """An object of a channel in a bucket: streamed, or a redirect to a presigned URL."""
        store = self.snapshot.stores[channel.name]
        try:
            info = await self._in_thread(lambda: store.stat(relative), self.object_pool)
        except StorageError as exc:
            log.error("%s", exc.message)
            return _plain(502, "the channel's storage did not answer")
        if info is None:
            return _plain(404)
        etag = info.tag if info.tag.startswith(('"', "W/")) else f'"{info.tag}"'
        modified = info.modified or 0.0
        headers = {
            "Server": SERVER,
            "ETag": etag,
            "Last-Modified": _http_date(modified),
            "Cache-Control": control,
            "Accept-Ranges": "bytes",
        }
        if vary:
            headers["Vary"] = vary
        if _not_modified(request, etag, modified):
            return web.Response(status=304, headers=headers)
        storage = channel.storage
        if storage is not None and storage.serve == "redirect":
            url = await self._in_thread(
                lambda: store.presign(relative, storage.presign_expiry), self.object_pool
            )
            if url is not None:
                # The URL expires: clients must not keep the redirect longer than it lives.
                age = max(0, min(channel.max_age, storage.presign_expiry // 2))
                return web.Response(
                    status=307,
                    headers={"Location": url, "Cache-Control": f"private, max-age={age}"},
                )
        size = info.size
        start, end, status = 0, size - 1, 200
        wanted = request.headers.get("Range")
        if wanted and _if_range_holds(request.headers.get("If-Range"), etag, modified):
            span = parse_range(wanted, size)
            if span is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Type"] = kind or content_type(relative.rsplit("/", 1)[-1])
        length = max(0, end - start + 1)
        opened = None
        context = store.open_range(relative, start, end, if_match=info.tag)
        if not head and length:
            try:
                opened = await self._in_thread(context.__enter__, self.object_pool)
            except (FileNotFoundError, PreconditionFailed):
                # Replaced or deleted since the HEAD: describe what is there now.
                if attempts > 1:
                    return await self._send_object(
                        request, channel, relative, head, exchange, control,
                        kind=kind, vary=vary, attempts=attempts - 1,
                    )  # fmt: skip
                return _plain(404)
            except StorageError as exc:
                log.error("%s", exc.message)
                return _plain(502, "the channel's storage did not answer")
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        try:
            await response.prepare(request)
            if opened is None:
                await response.write_eof()
                return response
            sent = 0
            handle = opened
            while sent < length:
                try:
                    chunk = await self._in_thread(lambda: handle.read(256 * 1024), self.object_pool)
                except OSError as exc:  # the bucket's connection broke mid-body
                    log.error("reading %s: %s", store.describe(relative), exc)
                    chunk = b""
                if not chunk:
                    break
                await response.write(chunk)
                sent += len(chunk)
            exchange.sent = sent
            if sent < length:  # the body ended early: never let it pass for a whole one
                response.force_close()
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
        except (ConnectionError, RuntimeError) as exc:
            log.debug("client left during %s: %s", auth.redact_path(request.raw_path), exc)
            exchange.aborted = True
            response.force_close()
            return response
        finally:
            if opened is not None:
                await self._in_thread(lambda: context.__exit__(None, None, None), self.object_pool)

    async def _send_file(
        self,
        request: web.BaseRequest,
        root: str,
        relative: str,
        head: bool,
        exchange: _Exchange,
        control: str,
        *,
        kind: str | None = None,
        vary: str | None = None,
    ) -> web.StreamResponse:
        st = stat_inside(root, relative)  # None: a symlink out of the channel, or nothing
        if st is None or not stat.S_ISREG(st.st_mode):
            return _plain(404)
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        headers = {
            "Server": SERVER,
            "ETag": etag,
            "Last-Modified": _http_date(st.st_mtime),
            "Cache-Control": control,
            "Accept-Ranges": "bytes",
        }
        if vary:
            headers["Vary"] = vary
        if _not_modified(request, etag, st.st_mtime):  # answered from a stat: no open
            return web.Response(status=304, headers=headers)
        try:
            fd = os.open(f"{root}/{relative}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return _plain(404)
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            # Replaced since the stat (a publish, or a symlink swapped in): check again.
            os.close(fd)
            found = open_inside(root, relative)
            if found is None:
                return _plain(404)
            fd, opened = found, os.fstat(found)
        handle = os.fdopen(fd, "rb", buffering=0)  # only sendfile reads it: no buffer needed
        try:
            if not stat.S_ISREG(opened.st_mode):
                return _plain(404)
            if (opened.st_size, opened.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                st = opened  # changed in between: describe what is sent
                etag = headers["ETag"] = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
                headers["Last-Modified"] = _http_date(st.st_mtime)
            start, end, status = 0, st.st_size - 1, 200
            wanted = request.headers.get("Range")
            if wanted and _if_range_holds(request.headers.get("If-Range"), etag, st.st_mtime):
                span = parse_range(wanted, st.st_size)
                if span is None:
                    return web.Response(
                        status=416, headers={"Content-Range": f"bytes */{st.st_size}"}
                    )
                start, end = span
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{st.st_size}"
            headers["Content-Type"] = kind or content_type(relative.rsplit("/", 1)[-1])
            length = max(0, end - start + 1)
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = length
            transport = request.transport
            try:
                await response.prepare(request)
                if head or not length:
                    await response.write_eof()
                    return response
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                await asyncio.get_running_loop().sendfile(transport, handle, start, length)
                exchange.sent = length
                await response.write_eof()  # the client may be gone by now as well
            except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closing
                # A client that leaves mid-response is normal (a cancelled download).
                log.debug("client left during %s: %s", auth.redact_path(request.raw_path), exc)
                exchange.aborted = True
                response.force_close()
                if transport is not None:
                    transport.abort()
            return response
        finally:
            handle.close()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        self.fetch_pool.shutdown(wait=True)
        self.work_pool.shutdown(wait=True)
        self.object_pool.shutdown(wait=True)
        self.passive.flush()
        self.metrics.publish()
        if self.access_log is not None:
            self.access_log.close()


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def accel_clash(prefix: str | None, loaded: LoadedConfig) -> str | None:
    """Why ``--accel-redirect`` cannot be ``prefix`` with this configuration: nginx's
    internal location there would hide a channel or a route of the server."""
    if not prefix:
        return None
    first = prefix.strip("/").split("/", 1)[0]
    names = {c.name for c in loaded.config.channels}
    if first in names or first in ROUTES:
        what = f"the channel {first!r}" if first in names else f"the server's /{first}/ URLs"
        return (
            f"--accel-redirect {prefix}: nginx's internal location there would hide {what}; "
            "choose another prefix (the documented one is /_reconcile-files)"
        )
    return None


def tls_warning(host: str, private: list[str], behind_proxy: bool) -> str | None:
    """What to say when tokens would cross a network in clear text (None: nothing)."""
    if not private or behind_proxy or _loopback(host):
        return None
    return (
        f"serving private channel(s) {', '.join(private)} on {host} without TLS: tokens "
        "would cross the network in clear text. Put a TLS terminator (nginx, caddy) in "
        "front and pass --behind-proxy; see docs/serve.md#tls"
    )


class ChannelServer:
    """A server on ``address`` (bound at once), run with :meth:`serve_forever`.

    ``shutdown`` (from another thread) and ``server_close`` end it as
    ``socketserver`` servers end: requests in flight finish first.
    """

    def __init__(
        self,
        address: tuple[str, int],
        loaded: LoadedConfig,
        options: ServeOptions | None = None,
        *,
        listening: socket.socket | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.options = options or ServeOptions()
        self.app = ServeApp(loaded, self.options, shared)
        self.socket = listening or listen(address, self.options.backlog)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self.install_signals = False
        self.on_started: Callable[[], None] | None = None  # called once it accepts

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def access_log(self) -> list[str]:
        """The last requests, as access log lines."""
        return self.app.recent

    @property
    def channels(self) -> dict[str, Channel | PypiChannel]:
        return self.app.snapshot.channels

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until :meth:`shutdown` (``poll_interval`` is accepted and unused)."""
        try:
            asyncio.run(self._main())
        finally:
            self._finished.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        server = web.Server(
            self.app.handle,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.options.shutdown_timeout
        )
        await runner.setup()
        site = web.SockSite(runner, self.socket, backlog=self.options.backlog)
        await site.start()
        tasks = [asyncio.create_task(self._housekeeping())]
        if self.install_signals:
            self._install_signals(loop)
        self._started.set()
        if self.on_started is not None:
            self.on_started()
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await runner.cleanup()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def stop(signum: int) -> None:
            assert self._stop is not None
            if not self._stop.is_set():
                log.info("stopping (signal %d): finishing requests in flight", signum)
                self._stop.set()
                # A second stop signal (Ctrl-C reaches a worker from the terminal and from
                # its supervisor) is ignored, also once the loop is gone: the stop under
                # way finishes, access log and counts included.
                # Blocked meanwhile: removing the loop's handler puts Python's own back
                # for a moment, and a second Ctrl-C there was a KeyboardInterrupt.
                both = {signal.SIGTERM, signal.SIGINT}
                signal.pthread_sigmask(signal.SIG_BLOCK, both)
                try:
                    for other in both:
                        loop.remove_signal_handler(other)
                        signal.signal(other, signal.SIG_IGN)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # A worker process starts with SIGHUP blocked: one sent meanwhile arrives now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    async def reload(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.app.work_pool, self.app.reload)

    async def _housekeeping(self) -> None:
        """Flush the access log every second; reload on config changes with --watch-config;
        sweep the deletions that are due every ``serve.sweep_interval`` seconds."""
        loop = asyncio.get_running_loop()
        next_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.options.watch_interval)
            if self.app.access_log is not None:
                self.app.access_log.flush()
            self.app.metrics.publish()
            if self.options.watch_config and self.app.config_changed():
                await self.reload()
            interval = self.app.snapshot.loaded.config.serve.sweep_interval
            sweeps = self.app.shared is None or self.app.shared.worker == 0  # one sweeper
            if sweeps and interval > 0 and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + interval
                await loop.run_in_executor(self.app.work_pool, self.app.sweep)

    def shutdown(self) -> None:
        """Stop serving (call from another thread); returns once stopped."""
        if not self._started.wait(timeout=30) or self._loop is None or self._stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._stop.set)
        self._finished.wait(timeout=self.options.shutdown_timeout + 30)

    def server_close(self) -> None:
        self.socket.close()
        self.app.close()


def listen(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listening TCP socket on ``address`` (IPv6 when the host is)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def serve(loaded: LoadedConfig, host: str, port: int, options: ServeOptions | None = None) -> None:
    """Serve until SIGTERM or SIGINT; requests in flight finish first; SIGHUP reloads."""
    options = options or ServeOptions()
    clash = accel_clash(options.accel_redirect, loaded)
    if clash:
        raise ReconcileError(clash)
    warning = tls_warning(host, _Snapshot(loaded).private, options.behind_proxy)
    if warning:
        log.warning("%s", warning)
    if options.access_log and options.access_log != "-":
        try:  # said once, here, not by every worker
            AccessLog(options.access_log).close()
        except OSError as exc:
            raise ReconcileError(
                f"cannot open the access log {options.access_log}: {exc.strerror or exc}"
            ) from None
    if options.workers > 1:
        _serve_in_workers(loaded, (host, port), options)
        return
    try:
        server = ChannelServer((host, port), loaded, options)
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None
    server.install_signals = True
    print(
        f"serving {len(server.channels)} channel(s) on {server.url}/", file=sys.stderr, flush=True
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        _clean_partial_downloads(server.app.snapshot.loaded)


def _cannot_listen(host: str, port: int, exc: OSError) -> ReconcileError:
    return ReconcileError(
        f"cannot listen on {host} port {port}: {exc.strerror or exc}",
        hint="another server may hold the port; choose another with --port",
    )


def _serve_in_workers(
    loaded: LoadedConfig, address: tuple[str, int], options: ServeOptions
) -> None:
    from reconciler.serve.workers import Port, Supervisor, WorkerFailed, runtime_folder

    try:
        port = Port(address, options.backlog)
    except OSError as exc:
        raise _cannot_listen(*address, exc) from None
    runtime = runtime_folder()

    def work(index: int, ready: Callable[[], None]) -> None:
        # The file as it is now: a worker started after a reload serves what the others
        # reloaded (the supervisor's copy when the file no longer reads).
        try:
            current = load_config(loaded.path, serving=True)
        except ConfigError as exc:
            log.error("%s does not read now; serving the configuration the server started "
                      "with:\n%s", loaded.path, exc.message)  # fmt: skip
            current = loaded
        shared = Shared(runtime, index)
        server = ChannelServer(
            port.address, current, options, listening=port.listening(), shared=shared
        )
        server.install_signals = True
        server.on_started = ready
        try:
            server.serve_forever()
        finally:
            server.server_close()

    def announce() -> None:
        print(
            f"serving {len(loaded.config.channels)} channel(s) on {port.url}/ "
            f"with {options.workers} processes",
            file=sys.stderr,
            flush=True,
        )

    try:
        Supervisor(options.workers, work, runtime, announce).run()
    except WorkerFailed as exc:
        raise ReconcileError(f"{exc}: the server did not start (see above)") from None
    finally:
        port.close()
        _clean_partial_downloads(loaded)


def _clean_partial_downloads(loaded: LoadedConfig) -> None:
    for channel in loaded.config.channels:
        channel_store(channel).clean_temporaries()


__all__ = ["ChannelServer", "ServeApp", "ServeOptions", "serve"]
