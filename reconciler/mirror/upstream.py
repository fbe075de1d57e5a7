"""Talking to an upstream channel: repodata with conditional GET, and verified downloads.

Sources are ``http(s)://`` URLs (one pooled ``requests`` session per upstream),
``file://`` URLs and plain paths. Repodata is fetched ``.zst`` first, falling back
to ``.json`` on 404; the body and its ``ETag`` / ``Last-Modified`` are kept under the
channel's state folder so a ``304`` reuses them. Failures retry with backoff on
5xx, connection errors and truncated bodies, then raise an error naming the URL
(credentials redacted). A token from ``token_env`` goes into anaconda.org-style
``/t/<token>/`` URLs and never into messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urljoin, urlparse

import orjson
import requests
import urllib3
import zstandard

from reconciler.conda.repodata import load_repodata
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint
from reconciler.storage import TEMP_PREFIX, write_atomic, write_if_changed

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
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "conda-reconcile"
            self._session = session
        return self._session

    def check_url(self, url: str, shown: str) -> None:
        """Refuse a URL on a host that is neither the source's nor allowed, or an
        https → http downgrade."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise UpstreamError(f"{shown}: refused a redirect to a {parsed.scheme or 'bare'} URL")
        if self.source.lower().startswith("https://") and parsed.scheme == "http":
            raise UpstreamError(f"{shown}: refused a redirect from https to {redact(url)}")
        if _host(url) not in self.hosts:
            raise UpstreamError(
                f"{shown}: refused a redirect to host {_host(url)} ({redact(url)})",
                hint="an upstream may only send us to its own host or to allowed_hosts",
            )

    def _get(self, url: str, shown: str, headers: dict[str, str]) -> requests.Response:
        """GET with redirects followed by hand, each hop's host checked first."""
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                response = self.session.get(
                    url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as exc:
                raise _Retryable(_describe(exc)) from None
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("location", "")
            response.close()
            url = urljoin(url, location)
            self.check_url(url, shown)
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
            return load_repodata(_unzstd(body, shown) if name.endswith(".zst") else body, shown)

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
                body = _read_body(response, limit, self.timeout)
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
            try:
                with tmp.open("wb") as out:
                    for chunk in self._chunks(location, shown):
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
                    raise UpstreamError(
                        f"{shown}: sha256 mismatch (expected {sha256}, got {digest.hexdigest()})",
                        hint="the upstream file does not match its index; nothing was replaced",
                    )
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, target)
            checkpoint("download.placed")
            return written

        result: int = self._retrying(shown, attempt)
        return result

    def _chunks(self, location: str, shown: str) -> Any:
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


def _read_body(response: requests.Response, limit: int, timeout: float) -> bytes:
    chunks = []
    total = 0
    pace = Pace(timeout, redact(response.url))
    try:
        for chunk in stream(response):
            total += len(chunk)
            pace.check(total)
            if total > limit:
                raise UpstreamError(f"{redact(response.url)}: response larger than {limit} bytes")
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise _Retryable(_describe(exc)) from None
    expected = response.headers.get("content-length")
    encoding = response.headers.get("content-encoding")
    if expected and not encoding and expected.isdigit() and int(expected) != total:
        raise _Retryable(f"truncated body: {total} of {expected} bytes")
    return b"".join(chunks)


def _unzstd(data: bytes, source: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while chunk := reader.read(CHUNK * 8):
                total += len(chunk)
                if total > MAX_REPODATA_BYTES:
                    raise UpstreamError(f"{source}: decompressed repodata is larger than the limit")
                chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise UpstreamError(f"{source}: not valid zstd data ({exc})") from None
    return b"".join(chunks)
