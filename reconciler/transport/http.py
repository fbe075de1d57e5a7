"""Talking to an upstream: metadata with conditional GET, and verified downloads.

Sources are ``http(s)://`` URLs (one pooled ``requests`` session per upstream),
``file://`` URLs and plain paths. Metadata bodies and their ``ETag`` /
``Last-Modified`` are kept in the user's cache directory (never in a channel), so a
``304`` reuses them; a caller may also offer validators and a body it kept itself
(a channel keeps the metadata its last apply used), so a fresh machine with an
empty cache still asks conditionally. Failures retry with backoff on 5xx,
connection errors and truncated bodies, then raise an error naming the URL
(credentials redacted). A token from ``token_env`` goes into anaconda.org-style
``/t/<token>/`` URLs and never into messages. This module is the only one that
talks to the network.

The upstream is untrusted: redirects are followed by hand and only to allowed
hosts (:meth:`Upstream.check_url`), response headers must be complete within the
timeout (:class:`_DeadlineAdapter`), bodies must keep a minimum pace (:class:`Pace`),
and sizes are capped before anything is decoded into memory.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urljoin, urlparse, urlsplit

import orjson
import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.store.local import LocalStore, write_atomic
from reconciler.transport import stopping
from reconciler.transport.errors import NotFound as NotFound
from reconciler.transport.errors import UpstreamError as UpstreamError
from reconciler.transport.unzstd import Alongside, UnzstdThread, amount
from reconciler.transport.unzstd import unzstd as _unzstd_within

if TYPE_CHECKING:
    from requests.sessions import _Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A transfer slower than this on average (after `timeout` seconds) is abandoned.
MIN_RATE = 16 * 1024
MAX_REDIRECTS = 5
# Repodata bigger than this is refused: no real channel comes near it.
MAX_REPODATA_BYTES = 2 * 1024 * 1024 * 1024


T = TypeVar("T")
R = TypeVar("R")  # what a body read alongside its download gives


def redact(url: str) -> str:
    """``https://h/t/SECRET/c`` → ``https://h/t/***/c``; user:password@ likewise."""
    url = re.sub(r"/t/[^/]+/", "/t/***/", url)
    return re.sub(r"://[^/@]+@", "://***@", url)


@dataclass(frozen=True)
class Validators:
    """What identifies one answer of an upstream: its HTTP validators and its digest."""

    sha256: str
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""
    url: str = ""  # where it came from after redirects, redacted

    def to_json(self) -> dict[str, str | None]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> Validators | None:
        if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
            return None
        text = {k: v for k, v in data.items() if isinstance(v, str)}
        return cls(
            sha256=text["sha256"],
            etag=text.get("etag"),
            last_modified=text.get("last-modified", text.get("last_modified")),
            content_type=text.get("content-type", text.get("content_type", "")),
            url=text.get("url", ""),
        )


@dataclass(frozen=True)
class CachedBody:
    body: bytes
    validators: Validators
    not_modified: bool  # a 304 (or the local file unchanged) let us reuse a kept copy

    @property
    def content_type(self) -> str:
        return self.validators.content_type

    @property
    def url(self) -> str:
        return self.validators.url


@dataclass(frozen=True)
class Kept:
    """A body the caller kept with its validators (offered for a conditional request)."""

    body: bytes
    validators: Validators


def body_validators(body: bytes, headers: dict[str, str], url: str) -> Validators:
    return Validators(
        sha256=hashlib.sha256(body).hexdigest(),
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        content_type=headers.get("content-type", ""),
        url=url,
    )


class _Keeping:
    """A fetched body hashed, and written to a temporary file in the cache, on a thread
    of its own; :meth:`commit` puts the copy in place, :meth:`discard` drops it."""

    def __init__(
        self, paths: tuple[Path, Path] | None, body: bytes, headers: dict[str, str], shown: str
    ) -> None:
        self._paths = paths
        self._body = body
        self._headers = headers
        self._shown = shown
        self._validators: Validators | None = None
        self._writer: Any = None
        self._problem: str | None = None
        self._thread = threading.Thread(target=self._run, name="reconcile-keep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._validators = body_validators(self._body, self._headers, self._shown)
        if self._paths is None:
            return
        try:
            self._writer = LocalStore(self._paths[0].parent).writer(self._paths[0].name)
            self._writer.handle.write(self._body)
            self._writer.handle.flush()
            os.fsync(self._writer.handle.fileno())  # the commit's own fsync is then quick
        except (OSError, ReconcileError) as exc:
            self._problem = exc.message if isinstance(exc, ReconcileError) else str(exc)
            self.discard_writer()

    def discard_writer(self) -> None:
        if self._writer is not None:
            with suppress(OSError, ReconcileError):
                self._writer.abort()
            self._writer = None

    def discard(self) -> None:
        self._thread.join()
        self.discard_writer()

    def commit(self) -> Validators:
        self._thread.join()
        assert self._validators is not None
        if self._paths is None:
            return self._validators
        try:  # a cache only saves work: never fail a run for it
            if self._writer is None:
                raise ReconcileError(self._problem or "not written")
            self._writer.commit()
            self._writer = None
            write_atomic(self._paths[1], orjson.dumps(self._validators.to_json()))
        except (OSError, ReconcileError) as exc:
            self.discard_writer()
            reason = exc.message if isinstance(exc, ReconcileError) else str(exc)
            log.warning("not caching %s: %s", redact(self._validators.url), reason)
        return self._validators


class Upstream:
    """One upstream; ``cache_dir`` (outside any channel) holds its conditional-GET cache."""

    def __init__(
        self,
        source: str,
        cache_dir: Path | None = None,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        config_dir: Path | None = None,
        allowed_hosts: Collection[str] = (),
    ) -> None:
        self.source = source.rstrip("/")
        # Where redirects may lead: the source's host and the hosts the config allows.
        self.hosts = {_host(source), *(h.lower() for h in allowed_hosts)}
        self.cache_dir = cache_dir
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        lowered = source.lower()
        self.is_http = lowered.startswith(("http://", "https://"))
        self.local_root: Path | None = None
        if not self.is_http:
            if lowered.startswith("file://"):
                self.local_root = Path(unquote(urlparse(source).path))
            else:
                path = Path(source)
                self.local_root = path if path.is_absolute() else (config_dir or Path()) / path
        self._session: requests.Session | None = None
        self._session_made = threading.Lock()

    # -- URLs ------------------------------------------------------------------------

    def url(self, subdir: str, filename: str) -> str:
        """The real URL of a file (with the token); never log it, use :meth:`shown`."""
        base = self.source
        if self.token and self.is_http:
            parsed = urlparse(base)
            base = f"{parsed.scheme}://{parsed.netloc}/t/{self.token}{parsed.path}"
        return f"{base}/{subdir}/{filename}"

    def shown(self, subdir: str, filename: str) -> str:
        return redact(f"{self.source}/{subdir}/{filename}")

    @property
    def session(self) -> requests.Session:
        with self._session_made:  # subdirs and packages are fetched from several threads
            if self._session is None:
                session = _Session()
                adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=64)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = "conda-reconcile"
                self._session = session
            return self._session

    def check_url(self, url: str, shown: str) -> None:
        """Refuse ``url`` (fetched for ``shown``) unless it is http(s) on the source's
        host or an allowed host, and not plain http under an https source.

        Raises :class:`UpstreamError` naming both, redacted.
        """
        self._check(url, shown, redirect=False)

    def _check(self, url: str, shown: str, *, redirect: bool) -> None:
        parsed = urlparse(url)
        what = "a redirect to " if redirect else ""
        if parsed.scheme not in ("http", "https"):
            raise UpstreamError(
                f"{shown}: refused {what}{redact(url)}: only http(s) URLs are followed"
            )
        if self.source.lower().startswith("https://") and parsed.scheme == "http":
            raise UpstreamError(
                f"{shown}: refused {'a redirect from https to' if redirect else 'plain http'} "
                f"{redact(url)}",
                hint="an https upstream may not send us to plain http",
            )
        if _host(url) not in self.hosts:
            raise UpstreamError(
                f"{shown}: refused {what or 'a URL on '}host {_host(url)} ({redact(url)})",
                hint="an upstream may only send us to its own host or to allowed_hosts",
            )

    def _get(self, url: str, shown: str, headers: dict[str, str]) -> requests.Response:
        """GET with redirects followed by hand, each hop's host checked first.

        Each hop's status line and headers must arrive within ``timeout`` seconds
        in all (see :class:`_DeadlineAdapter`), not only each read.
        """
        if self.is_http:
            self._check(url, shown, redirect=False)
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                response = self.session.get(
                    url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
                )
            except _HeadersStalled as exc:
                raise _Retryable(str(exc)) from None
            except requests.RequestException as exc:
                raise _Retryable(_describe(exc)) from None
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("location", "")
            response.close()
            url = urljoin(url, location)
            self._check(url, shown, redirect=True)
        raise UpstreamError(f"{shown}: more than {MAX_REDIRECTS} redirects")

    # -- retries -----------------------------------------------------------------------

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        delay = self.backoff
        for number in range(self.retries + 1):
            stopping.check()
            try:
                return attempt()
            except _Retryable as exc:
                if number == self.retries:
                    raise UpstreamError(
                        f"{what}: {exc} (gave up after {self.retries + 1} attempts)",
                        hint="check the mirror's source, or raise its timeout/retries",
                    ) from None
                log.info("%s: %s; retrying in %.1f s", what, exc, delay)
                stopping.pause(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- metadata ----------------------------------------------------------------------

    def _cache_paths(self, name: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / name, self.cache_dir / f"{name}.headers.json"

    def kept(self, name: str) -> Kept | None:
        """The body and validators in the cache directory, if any."""
        paths = self._cache_paths(name)
        if paths is None:
            return None
        try:
            body = paths[0].read_bytes()
            validators = Validators.from_json(orjson.loads(paths[1].read_bytes()))
        except (OSError, ValueError):
            return None
        if validators is None or hashlib.sha256(body).hexdigest() != validators.sha256:
            return None  # a torn or foreign cache entry: ask afresh
        return Kept(body, validators)

    def _keep(self, name: str, body: bytes, validators: Validators) -> None:
        paths = self._cache_paths(name)
        if paths is None:
            return
        try:
            write_atomic(paths[0], body)
            write_atomic(paths[1], orjson.dumps(validators.to_json()))
        except ReconcileError as exc:  # a cache only saves work: never fail a run for it
            log.warning("not caching %s: %s", redact(validators.url), exc.message)

    def get_cached(
        self,
        url: str,
        shown: str,
        name: str,
        limit: int,
        parse: Callable[[bytes], T],
        accept: str | None = None,
        offered: Kept | None = None,
        parse_kept: Callable[[bytes], T] | None = None,
        decoding: Callable[[int | None], Alongside[R]] | None = None,
        parse_decoded: Callable[[bytes, R], T] | None = None,
    ) -> tuple[T, CachedBody]:
        """GET ``url`` conditionally: with the validators of the copy cached as ``name``
        in the cache directory, or else of ``offered`` (a copy the caller kept).

        A ``304`` reuses that copy. A ``200`` body is kept only once ``parse``
        accepted it, so a garbled response never replaces a good copy.
        Returns what ``parse`` made of the body, and the body. :class:`NotFound` on 404.
        ``parse_kept`` (default ``parse``) reads a kept copy on a ``304``: that copy was
        parsed when it was kept, so a caller may defer the work. With ``decoding``, a
        ``200`` body is fed to a decompressor as it arrives (given the body's length, if
        known); when it judged the link slow enough to decompress meanwhile,
        ``parse_decoded`` reads the body and what came out of it (else ``parse`` does).
        """
        kept = self.kept(name) or offered

        def attempt() -> tuple[int, bytes, dict[str, str], Alongside[R] | None]:
            headers = {}
            if accept:
                headers["Accept"] = accept
            if kept is not None and kept.validators.etag:
                headers["If-None-Match"] = kept.validators.etag
            if kept is not None and kept.validators.last_modified:
                headers["If-Modified-Since"] = kept.validators.last_modified
            try:
                response = self._get(url, shown, headers)
            except requests.RequestException as exc:
                raise _Retryable(_describe(exc)) from None
            with response:
                if response.status_code == 404:
                    raise NotFound(f"{shown}: not found (404)")
                if response.status_code == 304 and kept is not None:
                    return 304, b"", {}, None
                if response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise UpstreamError(f"{shown}: HTTP {response.status_code}")
                unzstd = decoding(_content_length(response)) if decoding is not None else None
                try:
                    body = _read_body(
                        response,
                        limit,
                        self.timeout,
                        shown,
                        unzstd.feed if unzstd is not None else None,
                    )
                except BaseException:
                    if unzstd is not None:
                        unzstd.abandon()
                    raise
                returned = {
                    k: response.headers[k]
                    for k in ("etag", "last-modified", "content-type")
                    if k in response.headers
                }
                return 200, body, returned, unzstd

        status, body, headers, unzstd = self._retrying(shown, attempt)
        if status == 304:
            assert kept is not None
            self._keep(name, kept.body, kept.validators)
            return (parse_kept or parse)(kept.body), CachedBody(kept.body, kept.validators, True)
        # Hashing and writing the copy to the cache let go of the GIL: they run on another
        # thread while ``parse`` reads the body, and the copy is put in place once it parsed.
        try:
            keeping = _Keeping(self._cache_paths(name), body, headers, shown)
        except BaseException:
            if unzstd is not None:
                unzstd.abandon()
            raise
        try:
            if unzstd is not None and unzstd.thread is not None and parse_decoded is not None:
                parsed = parse_decoded(body, unzstd.result())
            else:
                if unzstd is not None:
                    unzstd.abandon()
                parsed = parse(body)
        except BaseException:
            keeping.discard()
            raise
        return parsed, CachedBody(body, keeping.commit(), False)

    def read_local(self, path: Path, shown: str, limit: int) -> bytes:
        """A file of a folder source: a regular file only (a FIFO or a device would hang),
        read within the mirror's timeout (a stalled network mount would too)."""
        return read_regular_file(path, shown, limit, self.timeout)

    # -- files -------------------------------------------------------------------------

    def download(self, relative: str, out: IO[bytes], size: int | None, sha256: str | None) -> int:
        """Fetch ``<source>/<relative>`` into ``out``, checking size and sha256."""
        subdir, _, filename = relative.rpartition("/")
        if self.local_root is not None:
            location = str(self.local_root / relative)
        else:
            location = self.url(subdir, filename)
        return self.download_url(location, self.shown(subdir, filename), out, size, sha256)

    def download_url(
        self, location: str, shown: str, out: IO[bytes], size: int | None, sha256: str | None
    ) -> int:
        """Fetch ``location`` (an http(s) URL or a local path) into the open file ``out``.

        ``shown`` is what messages say instead of the (possibly secret) location. On a
        mismatch :class:`UpstreamError` names the file; what was written is the caller's
        to drop (the store's temporary file).
        """

        def attempt() -> int:
            out.seek(0)
            out.truncate()
            digest = hashlib.sha256()
            written = 0
            pace = Pace(self.timeout, shown)
            sent: dict[str, str] = {}
            for chunk in self._chunks(location, shown, size, sent):
                written += len(chunk)
                pace.check(written)
                if size is not None and written > size:
                    raise UpstreamError(f"{shown}: more than the {size} bytes recorded")
                digest.update(chunk)
                out.write(chunk)
                checkpoint("download.mid")
            if size is not None and written != size:
                raise _Retryable(f"truncated: got {written} of {size} bytes")
            if sha256 and digest.hexdigest() != sha256:
                html = _is_html(sent.get("content-type", ""))
                raise UpstreamError(
                    f"{shown}: sha256 mismatch (expected {sha256}, got {digest.hexdigest()})"
                    + (" in an HTML page" if html else ""),
                    hint="a login or error page? check the source URL and the mirror's token_env"
                    if html
                    else "the upstream file does not match its index; nothing was replaced",
                )
            out.flush()
            return written

        result: int = self._retrying(shown, attempt)
        return result

    def _chunks(self, location: str, shown: str, size: int | None, sent: dict[str, str]) -> Any:
        """The file's bytes as they arrive; ``sent`` gets the response's content type."""
        if not location.lower().startswith(("http://", "https://")):
            yield from _local_chunks(Path(location), size, self.timeout)
            return
        try:
            # Packages are stored as sent: no compression layer to decode (or to bomb us).
            response = self._get(location, shown, {"Accept-Encoding": "identity"})
        except requests.RequestException as exc:
            raise _Retryable(_describe(exc)) from None
        with response:
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise UpstreamError(f"{shown}: HTTP {response.status_code}")
            sent["content-type"] = response.headers.get("content-type", "")
            _check_file_headers(response, shown, size)
            # Stored as sent (never decoded): a package is verified byte for byte.
            yield from stream(response, decode=False)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class Pace:
    """A floor on throughput, so a server dribbling bytes (slowloris) cannot hold a run.

    ``requests``' timeout bounds each socket read, not the transfer: one byte every
    few seconds never trips it. After a grace period of ``timeout`` seconds the
    transfer must average :data:`MIN_RATE` bytes per second.
    """

    def __init__(self, timeout: float, shown: str) -> None:
        self.grace = timeout
        self.shown = shown
        self.started = time.monotonic()

    def check(self, received: int) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.grace and received < MIN_RATE * (elapsed - self.grace):
            raise UpstreamError(
                f"{self.shown}: too slow ({received} bytes in {elapsed:.0f} s); gave up",
                hint=f"transfers must average {MIN_RATE // 1024} KiB/s after the first "
                f"{self.grace:.0f} s (the mirror's timeout)",
            )


class _Retryable(Exception):
    """A failure worth another attempt (5xx, connection trouble, a short body)."""


class _HeadersStalled(Exception):
    """The status line and headers were not all there within the timeout.

    Deliberately not an ``OSError``: it passes through ``urllib3`` and ``requests``
    untouched (the connection is closed on the way) and :meth:`Upstream._get`
    turns it into a retryable failure with this message.
    """


class _Watchdog:
    """One thread that fires every connection's header deadline.

    A ``threading.Timer`` per request started a thread each time, which cost about a
    millisecond per download (more than the rest of a small file's CPU time).
    :meth:`cancel` returns only when the action can no longer run: actions run with
    the lock held.
    """

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self._reset()
        # A child of fork has no watchdog thread, and the lock may have been held by it.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._wake = threading.Condition()
        self._heap: list[_Deadline] = []
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def arm(self, delay: float, action: Callable[[], None]) -> _Deadline:
        deadline = _Deadline(time.monotonic() + delay, next(self._numbers), action)
        with self._wake:
            heapq.heappush(self._heap, deadline)
            if self._thread is None or not self._thread.is_alive():  # first use, or a fork
                self._thread = threading.Thread(
                    target=self._run, name="reconcile-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0] is deadline:
                self._wake.notify()
        return deadline

    def cancel(self, deadline: _Deadline) -> None:
        with self._wake:
            if deadline.armed:
                deadline.armed = False
                self._cancelled += 1
                # Cancelled entries wait for their time in the heap: drop them in bulk.
                if self._cancelled > 256 and self._cancelled * 2 > len(self._heap):
                    self._heap = [d for d in self._heap if d.armed]
                    heapq.heapify(self._heap)
                    self._cancelled = 0

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._heap and not self._heap[0].armed:
                    heapq.heappop(self._heap)
                    self._cancelled -= 1
                if not self._heap:
                    self._wake.wait()
                    continue
                delay = self._heap[0].when - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                deadline = heapq.heappop(self._heap)
                deadline.armed = False
                with suppress(Exception):  # never let one action stop the others
                    deadline.action()


@dataclass(order=True)
class _Deadline:
    when: float
    number: int
    action: Callable[[], None] = field(compare=False)
    armed: bool = field(default=True, compare=False)


_WATCHDOG = _Watchdog()


def _headers_in_time(
    connection: HTTPConnection, getresponse: Callable[[], BaseHTTPResponse]
) -> BaseHTTPResponse:
    """Run ``getresponse`` with a deadline on the whole header phase.

    ``requests``' timeout bounds each socket read, so a server sending its headers
    a byte at a time never trips it. ``urllib3`` sets the connection's timeout to
    the read timeout before asking for the response: after that long in all, the
    watchdog shuts the socket down, which ends the blocked read at once.
    """
    limit = connection.timeout
    sock = connection.sock
    if not isinstance(limit, (int, float)) or limit <= 0 or sock is None:
        return getresponse()
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with suppress(OSError):
            # The plain socket's shutdown, also under TLS: it only ends the blocked read.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    stalled = f"no complete response headers within {limit:g} s"
    deadline = _WATCHDOG.arm(limit, cut)
    try:
        response = getresponse()
    except Exception:
        if fired.is_set():
            raise _HeadersStalled(stalled) from None
        raise
    finally:
        _WATCHDOG.cancel(deadline)
    if fired.is_set():  # http.client takes the cut for the end of the headers
        raise _HeadersStalled(stalled)
    return response


class _Session(requests.Session):
    """A session that reads its settings from the environment once per scheme and host.

    ``requests`` looks at every variable of ``os.environ`` for proxies (twice) on each
    request; that cost as much CPU as the rest of a small download. The environment
    does not change during a run, and the answer depends only on the scheme and host.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], _Settings] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        if proxies or not self.trust_env:  # per-request proxies: as requests does it
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port, stream, verify, cert)
        cached = self._environment.get(key)
        if cached is None:
            cached = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._environment) < 64:  # a few hosts (redirects); never unbounded
                self._environment[key] = cached
        # Copies: requests may change what it is given.
        return {**cached, "proxies": dict(cached["proxies"])}


class _DeadlineHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        return _headers_in_time(self, super().getresponse)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        return _headers_in_time(self, super().getresponse)


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections bound the header phase (:func:`_headers_in_time`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _use_deadline_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: Any, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _use_deadline_pools(manager)
        return manager


def _use_deadline_pools(manager: Any) -> None:
    """Swap the standard pool classes (a SOCKS proxy's own are left alone)."""
    classes = dict(manager.pool_classes_by_scheme)
    if classes.get("http") is HTTPConnectionPool:
        classes["http"] = _DeadlineHTTPPool
    if classes.get("https") is HTTPSConnectionPool:
        classes["https"] = _DeadlineHTTPSPool
    manager.pool_classes_by_scheme = classes


def _is_html(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _check_file_headers(response: requests.Response, shown: str, size: int | None) -> None:
    """Refuse, before reading the body, an answer that cannot be the file of ``size`` bytes.

    An HTML page (a login or error page served with 200) is refused unless its length
    is the recorded size; without a recorded size the sha256 check decides.
    """
    length = response.headers.get("content-length", "")
    declared = _length(length)
    if size is not None and _is_html(response.headers.get("content-type", "")) and declared != size:
        raise UpstreamError(
            f"{shown}: the upstream answered with an HTML page ({length or 'unknown'} bytes), "
            "not the file",
            hint="a login or error page? check the source URL and the mirror's token_env",
        )
    if size is not None and declared is not None and declared != size:
        encoding = response.headers.get("content-encoding", "")
        sent = f" (Content-Encoding: {encoding})" if encoding else ""
        raise _Retryable(f"Content-Length {declared}{sent} differs from the {size} bytes recorded")


def stream(response: requests.Response, decode: bool = True) -> Iterator[bytes]:
    """The body as it arrives (decoded), each read returning what one recv gave.

    ``iter_content`` waits for whole chunks, so a server dribbling bytes would
    never let :class:`Pace` look at the clock.
    """
    try:
        while chunk := response.raw.read1(CHUNK, decode_content=decode):
            yield chunk
    except urllib3.exceptions.ProtocolError as exc:
        raise _Retryable(f"body cut short ({type(exc).__name__})") from None
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise _Retryable(type(exc).__name__) from None


def _host(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def _content_length(response: requests.Response) -> int | None:
    """The body's length as sent, when the headers say it (and no encoding changes it)."""
    if response.headers.get("content-encoding"):
        return None
    return _length(response.headers.get("content-length", ""))


def _length(value: str) -> int | None:
    """A Content-Length value as a number; None when it is not one ("²" passes isdigit)."""
    return int(value) if value.isascii() and value.isdigit() else None


def _read_body(
    response: requests.Response,
    limit: int,
    timeout: float,
    shown: str,
    sink: Callable[[bytes], None] | None = None,
) -> bytes:
    """The whole body, decoded, refused beyond ``limit`` bytes (counted after decoding);
    each piece also goes to ``sink`` as it arrives.

    ``urllib3`` (2.6 and later) decodes at most one chunk per read, so a compression
    bomb costs at most ``limit`` plus a chunk of memory.
    """
    # Grown in place (never the chunks and their join at once), and its bytes handed over
    # without a copy at the end: a bytearray would be copied into bytes.
    body = io.BytesIO()
    total = 0
    pace = Pace(timeout, shown)
    encoding = response.headers.get("content-encoding")
    try:
        for chunk in stream(response):
            total += len(chunk)
            pace.check(total)
            stopping.check()
            if total > limit:
                decoded = f" once decoded (Content-Encoding: {encoding})" if encoding else ""
                raise UpstreamError(
                    f"{shown}: response larger than the limit of {amount(limit)}{decoded}; gave up",
                    hint="the upstream sent far more than any real index; check the source",
                )
            body.write(chunk)
            if sink is not None:
                sink(chunk)
    except requests.RequestException as exc:
        raise _Retryable(_describe(exc)) from None
    expected = _content_length(response)
    if expected is not None and expected != total:
        raise _Retryable(f"truncated body: {total} of {expected} bytes")
    return body.getvalue()


def unzstd(data: bytes, source: str) -> bytes | bytearray:
    """zstd frames decompressed, capped at :data:`MAX_REPODATA_BYTES`."""
    return _unzstd_within(data, source, MAX_REPODATA_BYTES)


def unzstd_alongside(source: str, expected: int | None) -> Alongside[bytearray]:
    """What a ``.zst`` body is fed to as it arrives (see :meth:`Upstream.get_cached`): on a
    slow link it is decompressed meanwhile; capped at :data:`MAX_REPODATA_BYTES`."""
    return Alongside(expected, partial(UnzstdThread, source, MAX_REPODATA_BYTES))


def _within(timeout: float, shown: str, work: Callable[[], T]) -> T:
    """``work()`` in a helper thread, given up after ``timeout`` seconds.

    A read from a stalled network mount blocks in the kernel where nothing can
    interrupt it; the thread is left to finish on its own (it is a daemon) and the
    run goes on with an error naming the file.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="local-upstream-read").start()
    if not done.wait(timeout):
        raise UpstreamError(
            f"{shown}: no answer within {timeout:g} s",
            hint="a stalled network mount? check the folder, or raise the mirror's timeout",
        )
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _open_regular(path: Path, shown: str, timeout: float) -> int:
    """An fd of ``path`` if it is a regular file; an error naming it otherwise."""
    try:
        fd = _within(timeout, shown, lambda: os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        raise NotFound(f"{shown}: not found") from None
    except OSError as exc:
        raise UpstreamError(f"{shown}: cannot read it: {exc.strerror or exc}") from None

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UpstreamError(
            f"{shown}: not a regular file (a FIFO, device or folder); refusing to read it"
        )
    return fd


def _local_chunks(path: Path, size: int | None, timeout: float) -> Iterator[bytes]:
    shown = str(path)
    fd = _open_regular(path, shown, timeout)
    try:
        read = 0
        while True:
            chunk = _within(timeout, shown, lambda: os.read(fd, CHUNK))
            if not chunk:
                return
            read += len(chunk)
            yield chunk
            if size is not None and read > size:
                return  # the caller refuses it; no need to read an endless file to its end
    finally:
        os.close(fd)


def read_regular_file(path: Path, shown: str, limit: int, timeout: float) -> bytes:
    """A local upstream file, whole: regular files only, each read within ``timeout``,
    refused beyond ``limit`` bytes."""
    chunks = []
    total = 0
    for chunk in _local_chunks(path, limit, timeout):
        total += len(chunk)
        if total > limit:
            raise UpstreamError(f"{shown}: larger than the limit of {amount(limit)}; gave up")
        chunks.append(chunk)
    return b"".join(chunks)
