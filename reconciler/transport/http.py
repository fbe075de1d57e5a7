"""Talking to an upstream channel: repodata with conditional GET, and verified downloads.

Sources are ``http(s)://`` URLs (one pooled ``requests`` session per upstream),
``file://`` URLs and plain paths. Repodata is fetched ``.zst`` first, falling back
to ``.json`` on 404; the body and its ``ETag`` / ``Last-Modified`` are kept under the
channel's state folder so a ``304`` reuses them. Failures retry with backoff on
5xx, connection errors and truncated bodies, then raise an error naming the URL
(credentials redacted). A token from ``token_env`` goes into anaconda.org-style
``/t/<token>/`` URLs and never into messages.

The upstream is untrusted: redirects are followed by hand and only to allowed
hosts (:meth:`Upstream.check_url`), response headers must be complete within the
timeout (:class:`_DeadlineAdapter`), bodies must keep a minimum pace (:class:`Pace`),
and sizes are capped before anything is decoded into memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urljoin, urlparse

import orjson
import requests
import urllib3
import zstandard
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

from reconciler.conda.repodata import load_repodata
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.store.local import TEMP_PREFIX, write_atomic, write_if_changed

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A transfer slower than this on average (after `timeout` seconds) is abandoned.
MIN_RATE = 16 * 1024
MAX_REDIRECTS = 5
# Repodata bigger than this is refused: no real channel comes near it.
MAX_REPODATA_BYTES = 2 * 1024 * 1024 * 1024


T = TypeVar("T")


class UpstreamError(ReconcileError):
    """An upstream that cannot be reached, or sent something unusable."""


class NotFound(UpstreamError):
    pass


def redact(url: str) -> str:
    """``https://h/t/SECRET/c`` → ``https://h/t/***/c``; user:password@ likewise."""
    url = re.sub(r"/t/[^/]+/", "/t/***/", url)
    return re.sub(r"://[^/@]+@", "://***@", url)


@dataclass(frozen=True)
class CachedBody:
    body: bytes
    content_type: str
    url: str  # where it came from after redirects, redacted
    not_modified: bool


@dataclass(frozen=True)
class FetchedRepodata:
    repodata: dict[str, Any]
    url: str  # redacted
    not_modified: bool  # True when a 304 let us reuse the cached copy


class Upstream:
    """One upstream channel; ``state_dir`` holds its conditional-GET cache."""

    def __init__(
        self,
        source: str,
        state_dir: Path,
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
        self.state_dir = state_dir
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
        if self._session is None:
            session = requests.Session()
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
            try:
                return attempt()
            except _Retryable as exc:
                if number == self.retries:
                    raise UpstreamError(
                        f"{what}: {exc} (gave up after {self.retries + 1} attempts)",
                        hint="check the mirror's source, or raise its timeout/retries",
                    ) from None
                log.info("%s: %s; retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- repodata ----------------------------------------------------------------------

    def fetch_repodata(self, subdir: str) -> FetchedRepodata:
        """The subdir's repodata; :class:`NotFound` when the upstream has no such subdir."""
        if self.local_root is not None:
            return self._local_repodata(subdir)
        for name in ("repodata.json.zst", "repodata.json"):
            try:
                return self._http_repodata(subdir, name)
            except NotFound:
                continue
        raise NotFound(f"{self.shown(subdir, 'repodata.json')}: not found (404)")

    def _local_repodata(self, subdir: str) -> FetchedRepodata:
        assert self.local_root is not None
        folder = self.local_root / subdir
        for name in ("repodata.json.zst", "repodata.json"):
            path = folder / name
            if path.is_file():
                body = path.read_bytes()
                data = _unzstd(body, str(path)) if name.endswith(".zst") else body
                repodata = load_repodata(data, str(path))
                # Kept like an HTTP body, so a mirror that is not due can use it.
                cached, _ = self._cache_paths(subdir, name)
                unchanged = not write_if_changed(cached, body)
                return FetchedRepodata(repodata, str(path), unchanged)
        raise NotFound(f"{folder / 'repodata.json'}: not found")

    def cached_repodata(self, subdir: str) -> FetchedRepodata | None:
        """The copy kept from the last fetch, without asking the upstream (None: none kept)."""
        for name in ("repodata.json.zst", "repodata.json"):
            body_path, _ = self._cache_paths(subdir, name)
            if body_path.is_file():
                body = body_path.read_bytes()
                data = _unzstd(body, str(body_path)) if name.endswith(".zst") else body
                return FetchedRepodata(load_repodata(data, str(body_path)), str(body_path), True)
        return None

    def _cache_paths(self, subdir: str, name: str) -> tuple[Path, Path]:
        base = self.state_dir / subdir
        return base / name, base / f"{name}.headers.json"

    def _http_repodata(self, subdir: str, name: str) -> FetchedRepodata:
        body_path, headers_path = self._cache_paths(subdir, name)
        shown = self.shown(subdir, name)

        def parse(body: bytes) -> dict[str, Any]:
            try:
                data = _unzstd(body, shown) if name.endswith(".zst") else body
                return load_repodata(data, shown)
            except ReconcileError as exc:
                if isinstance(exc, UpstreamError):
                    raise
                html = body.lstrip()[:1] == b"<"
                raise UpstreamError(
                    exc.message,
                    hint="the upstream sent an HTML page: a login or error page?"
                    if html
                    else "the upstream sent something that is not repodata; nothing was kept",
                ) from None

        repodata, fetched = self.get_cached(
            self.url(subdir, name), shown, body_path, headers_path, MAX_REPODATA_BYTES, parse
        )
        return FetchedRepodata(repodata, shown, fetched.not_modified)

    def get_cached(
        self,
        url: str,
        shown: str,
        body_path: Path,
        headers_path: Path,
        limit: int,
        parse: Callable[[bytes], T],
        accept: str | None = None,
    ) -> tuple[T, CachedBody]:
        """GET ``url`` with a conditional-request cache kept at ``body_path``.

        A ``304`` reuses the kept body. A ``200`` body is kept only once ``parse``
        accepted it, so a garbled response never replaces a good copy.
        Returns what ``parse`` made of the body, and the body. :class:`NotFound` on 404.
        """
        cached_headers: dict[str, str] = {}
        if body_path.is_file():
            try:
                cached_headers = orjson.loads(headers_path.read_bytes())
            except (OSError, ValueError):
                cached_headers = {}

        def attempt() -> tuple[int, bytes, dict[str, str]]:
            headers = {}
            if accept:
                headers["Accept"] = accept
            if cached_headers.get("etag"):
                headers["If-None-Match"] = cached_headers["etag"]
            if cached_headers.get("last-modified"):
                headers["If-Modified-Since"] = cached_headers["last-modified"]
            try:
                response = self._get(url, shown, headers)
            except requests.RequestException as exc:
                raise _Retryable(_describe(exc)) from None
            with response:
                if response.status_code == 404:
                    raise NotFound(f"{shown}: not found (404)")
                if response.status_code == 304 and body_path.is_file():
                    return 304, b"", {}
                if response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise UpstreamError(f"{shown}: HTTP {response.status_code}")
                body = _read_body(response, limit, self.timeout, shown)
                kept = {
                    k: response.headers[k]
                    for k in ("etag", "last-modified", "content-type")
                    if k in response.headers
                }
                kept["url"] = redact(response.url)
                return 200, body, kept

        status, body, headers = self._retrying(shown, attempt)
        if status == 304:
            body = body_path.read_bytes()
            kept = CachedBody(
                body,
                cached_headers.get("content-type", ""),
                cached_headers.get("url", shown),
                True,
            )
            return parse(body), kept
        parsed = parse(body)
        write_atomic(body_path, body)
        write_atomic(headers_path, orjson.dumps(headers))
        fetched = CachedBody(
            body, headers.get("content-type", ""), headers.get("url", shown), False
        )
        return parsed, fetched

    # -- files -------------------------------------------------------------------------

    def download(
        self, subdir: str, filename: str, target: Path, size: int | None, sha256: str | None
    ) -> int:
        """Fetch a package into ``target`` (atomically), checking size and sha256.

        Returns the bytes written. On any mismatch the temporary file is removed,
        ``target`` is left as it was, and :class:`UpstreamError` names the file.
        """
        if self.local_root is not None:
            location = str(self.local_root / subdir / filename)
        else:
            location = self.url(subdir, filename)
        return self.download_url(location, self.shown(subdir, filename), target, size, sha256)

    def download_url(
        self, location: str, shown: str, target: Path, size: int | None, sha256: str | None
    ) -> int:
        """Fetch ``location`` (an http(s) URL or a local path) into ``target``, verified.

        ``shown`` is what messages say instead of the (possibly secret) location.
        """
        tmp = target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}")

        def attempt() -> int:
            digest = hashlib.sha256()
            written = 0
            pace = Pace(self.timeout, shown)
            sent: dict[str, str] = {}
            try:
                with tmp.open("wb") as out:
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
                        hint="a login or error page? check the source URL and the mirror's "
                        "token_env"
                        if html
                        else "the upstream file does not match its index; nothing was replaced",
                    )
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, target)
            checkpoint("download.placed")
            return written

        result: int = self._retrying(shown, attempt)
        return result

    def _chunks(self, location: str, shown: str, size: int | None, sent: dict[str, str]) -> Any:
        """The file's bytes as they arrive; ``sent`` gets the response's content type."""
        if not location.lower().startswith(("http://", "https://")):
            try:
                with open(location, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        yield chunk
            except FileNotFoundError:
                raise UpstreamError(f"{location}: not found upstream") from None
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


def _headers_in_time(
    connection: HTTPConnection, getresponse: Callable[[], BaseHTTPResponse]
) -> BaseHTTPResponse:
    """Run ``getresponse`` with a deadline on the whole header phase.

    ``requests``' timeout bounds each socket read, so a server sending its headers
    a byte at a time never trips it. ``urllib3`` sets the connection's timeout to
    the read timeout before asking for the response: after that long in all, a
    timer shuts the socket down, which ends the blocked read at once.
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
    timer = threading.Timer(limit, cut)
    timer.daemon = True
    timer.start()
    try:
        response = getresponse()
    except Exception:
        if fired.is_set():
            raise _HeadersStalled(stalled) from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():  # http.client takes the cut for the end of the headers
        raise _HeadersStalled(stalled)
    return response


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
    declared = int(length) if length.isdigit() else None
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


def _amount(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def _read_body(response: requests.Response, limit: int, timeout: float, shown: str) -> bytes:
    """The whole body, decoded, refused beyond ``limit`` bytes (counted after decoding).

    ``urllib3`` (2.6 and later) decodes at most one chunk per read, so a compression
    bomb costs at most ``limit`` plus a chunk of memory.
    """
    chunks = []
    total = 0
    pace = Pace(timeout, shown)
    encoding = response.headers.get("content-encoding")
    try:
        for chunk in stream(response):
            total += len(chunk)
            pace.check(total)
            if total > limit:
                decoded = f" once decoded (Content-Encoding: {encoding})" if encoding else ""
                raise UpstreamError(
                    f"{shown}: response larger than the limit of {_amount(limit)}{decoded}; "
                    "gave up",
                    hint="the upstream sent far more than any real index; check the source",
                )
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise _Retryable(_describe(exc)) from None
    expected = response.headers.get("content-length")
    if expected and not encoding and expected.isdigit() and int(expected) != total:
        raise _Retryable(f"truncated body: {total} of {expected} bytes")
    return b"".join(chunks)


# Compressed input is decompressed this much at a time. A zstd block of 4 bytes can
# stand for 128 KiB, so one step makes at most 32 MiB: a bomb overshoots the limit by that.
_ZSTD_STEP = 1024


def _unzstd(data: bytes, source: str) -> bytes:
    """Decompress zstd frames, refusing more than :data:`MAX_REPODATA_BYTES` out
    and a frame cut short (which a stream reader would end silently)."""
    limit = MAX_REPODATA_BYTES
    chunks: list[bytes] = []
    total = 0
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False  # fed bytes of a frame that has not ended yet
    view = memoryview(data)
    try:
        for start in range(0, len(view), _ZSTD_STEP):
            piece: bytes | memoryview = view[start : start + _ZSTD_STEP]
            while piece:
                chunk = frame.decompress(piece)
                in_frame = True
                piece = b""
                total += len(chunk)
                if total > limit:
                    raise UpstreamError(
                        f"{source}: decompressed repodata is larger than the limit of "
                        f"{_amount(limit)}; gave up",
                        hint="no real channel comes near it: a compression bomb?",
                    )
                chunks.append(chunk)
                if frame.eof:  # the rest of this piece starts another frame
                    piece = frame.unused_data
                    frame = decompressor.decompressobj()
                    in_frame = False
    except zstandard.ZstdError as exc:
        raise UpstreamError(f"{source}: not valid zstd data ({exc})") from None
    if not data:
        raise UpstreamError(f"{source}: empty, not zstd data")
    if in_frame:
        raise UpstreamError(f"{source}: zstd data cut short (the last frame does not end)")
    return b"".join(chunks)
