"""A conda mirror's upstream: its repodata per subdir, and the files it lists.

Repodata is fetched ``.zst`` first, falling back to ``.json`` on 404, from an
HTTP(S) channel or a local folder. Every fetch is conditional: on the
validators of the copy in the user's cache directory, or else of the copy the
channel keeps from its last apply (its *snapshot*, so a fresh CI runner with an
empty cache still gets a ``304``). What a mirror selected from is kept with the
channel by apply (``.reconciler/upstream/<mirror>/<subdir>/``), so a later plan
can re-select from it without the network.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson

from reconciler.conda import window_scan
from reconciler.conda.repodata import load_repodata
from reconciler.conda.sparse import SparseRepodata
from reconciler.conda.window_scan import Scanned
from reconciler.config.models import Mirror
from reconciler.engine import layout
from reconciler.errors import ReconcileError
from reconciler.kinds.conda.scan_alongside import scan_alongside
from reconciler.store.base import Store
from reconciler.transport import http as transport
from reconciler.transport import stopping
from reconciler.transport.http import (
    Kept,
    NotFound,
    Upstream,
    UpstreamError,
    Validators,
    body_validators,
    unzstd,
    unzstd_alongside,
)
from reconciler.transport.unzstd import Alongside

REPODATA_NAMES = ("repodata.json.zst", "repodata.json")


class Parsed:
    """A body's repodata, read sparsely when first asked for.

    A body that was just fetched is read at once (a garbled one must not be kept);
    one read from a cache or the channel was checked by its digest and read when it was
    kept, so its reading waits until something needs it — often nothing does.
    """

    def __init__(
        self,
        body: bytes,
        name: str,
        shown: str,
        decoded: bytes | bytearray | Scanned | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        self.body = body
        self.name = name
        self.shown = shown
        # The body decompressed (or read through the window) already, while it downloaded.
        self._decoded = decoded
        self.wanted = wanted  # the names whose records will be asked for (None: any)
        self._sparse: SparseRepodata | None = None

    def get(self) -> SparseRepodata:
        if self._sparse is None:
            self._sparse = parse_sparse(
                self.body, self.name, self.shown, self._decoded, self.wanted
            )
            self._decoded = None
        return self._sparse

    def expect(self, wanted: Callable[[str], bool] | None) -> None:
        """Only records of names ``wanted`` accepts are likely to be asked for (others
        cost one more scan): a big body not yet read keeps only those."""
        if self._sparse is None:
            self.wanted = wanted

    def now(self) -> Parsed:
        self.get()
        return self

    @property
    def ready(self) -> bool:
        """Whether it was read already."""
        return self._sparse is not None


@dataclass(frozen=True)
class Metadata:
    """One subdir's repodata as a mirror read it, with what identifies it."""

    subdir: str
    name: str  # repodata.json.zst or repodata.json
    body: bytes  # as sent (compressed when .zst)
    validators: Validators
    parsed: Parsed
    not_modified: bool  # the same bytes as the copy offered or cached

    @property
    def sha256(self) -> str:
        return self.validators.sha256

    @property
    def sparse(self) -> SparseRepodata:
        return self.parsed.get()

    @property
    def repodata(self) -> dict[str, Any]:
        """The whole document, every record parsed (slow on a big upstream)."""
        return self.sparse.full()


def _decoded(body: bytes, name: str, shown: str) -> bytes | bytearray:
    return unzstd(body, shown) if name.endswith(".zst") else body


def _not_repodata(exc: ReconcileError, body: bytes) -> UpstreamError:
    html = body.lstrip()[:1] == b"<"
    return UpstreamError(
        exc.message,
        hint="the upstream sent an HTML page: a login or error page?"
        if html
        else "the upstream sent something that is not repodata; nothing was kept",
    )


def parse_body(body: bytes, name: str, shown: str) -> dict[str, Any]:
    """Repodata from a body as fetched; an error naming ``shown`` when it is not repodata."""
    try:
        return load_repodata(_decoded(body, name, shown), shown)
    except UpstreamError:
        raise
    except ReconcileError as exc:
        raise _not_repodata(exc, body) from None


def parse_sparse(
    body: bytes,
    name: str,
    shown: str,
    decoded: bytes | bytearray | Scanned | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> SparseRepodata:
    """:func:`parse_body`, read sparsely: the same errors, records parsed when asked for.
    ``decoded`` is the body decompressed already, if it was. With ``wanted``, a ``.zst``
    body is read through a window keeping only the records of the names it accepts
    (:mod:`~reconciler.conda.window_scan`), when the document allows."""

    def load() -> bytes | bytearray:
        return _decoded(body, name, shown)

    if isinstance(decoded, Scanned):
        if window_scan.one_frame(body):
            return SparseRepodata.from_scan(decoded, shown, load)
        decoded = None  # something after the frame: the whole read takes it or says why
        wanted = None
    if decoded is None and wanted is not None and name.endswith(".zst"):
        scanned = window_scan.scan(body, wanted, transport.MAX_REPODATA_BYTES, stopping.checker())
        if scanned is not None:
            return SparseRepodata.from_scan(scanned, shown, load)
    try:
        return SparseRepodata(load() if decoded is None else decoded, shown, load)
    except UpstreamError:
        raise
    except ReconcileError as exc:
        raise _not_repodata(exc, body) from None


def _read_now(
    body: bytes,
    decoded: bytes | bytearray | Scanned | None = None,
    *,
    name: str,
    shown: str,
    wanted: Callable[[str], bool] | None = None,
) -> Parsed:
    """A body just fetched (``decoded``: decompressed already), read at once."""
    return Parsed(body, name, shown, decoded, wanted).now()


# Runs a body's reading (given as a function) and returns what it read.
Reading = Callable[[Callable[[], Parsed]], Parsed]


def _read_with(
    read: Reading | None,
    body: bytes,
    *,
    name: str,
    shown: str,
    wanted: Callable[[str], bool] | None,
) -> Parsed:
    """A body just fetched, read at once (by ``read``, when given)."""
    reading = partial(_read_now, body, name=name, shown=shown, wanted=wanted)
    return reading() if read is None else read(reading)


def _alongside(
    shown: str, wanted: Callable[[str], bool] | None
) -> Callable[[int | None], Alongside[Any]]:
    if wanted is None:
        return partial(unzstd_alongside, shown)
    return partial(scan_alongside, shown, wanted, transport.MAX_REPODATA_BYTES)


def cache_folder(cache_dir: Path | None, source: str) -> Path | None:
    """This source's folder in the HTTP cache (one per source URL)."""
    if cache_dir is None:
        return None
    return cache_dir / "conda" / hashlib.sha256(source.encode()).hexdigest()[:20]


class CondaUpstream:
    """A mirror's upstream channel."""

    def __init__(
        self,
        mirror: Mirror,
        config_dir: Path | None,
        cache_dir: Path | None,
        *,
        backoff: float = 0.5,
    ) -> None:
        token = os.environ.get(mirror.token_env) if mirror.token_env else None
        self.mirror = mirror
        self.http = Upstream(
            mirror.source,
            cache_folder(cache_dir, mirror.source),
            token=token,
            timeout=mirror.timeout,
            retries=mirror.retries,
            backoff=backoff,
            config_dir=config_dir,
        )

    def shown(self, subdir: str, name: str) -> str:
        return self.http.shown(subdir, name)

    def fetch(
        self,
        subdir: str,
        offered: Metadata | None,
        wanted: Callable[[str], bool] | None = None,
        read: Reading | None = None,
    ) -> Metadata:
        """The subdir's repodata now; :class:`NotFound` when the upstream has no such subdir.
        ``wanted``: the names whose records will be read (see :class:`Parsed`). ``read``
        runs the reading of a fetched body (under a lock, say); then nothing of the body
        is decompressed before it, not even while it downloads."""
        if self.http.local_root is not None:
            return self._local(subdir, offered, wanted, read)
        for name in REPODATA_NAMES:
            kept = (
                Kept(offered.body, offered.validators)
                if offered is not None and offered.name == name
                else None
            )
            shown = self.shown(subdir, name)
            zst = name.endswith(".zst")
            try:
                parsed, fetched = self.http.get_cached(
                    self.http.url(subdir, name),
                    shown,
                    f"{subdir}/{name}",
                    transport.MAX_REPODATA_BYTES,
                    partial(_read_with, read, name=name, shown=shown, wanted=wanted),
                    offered=kept,
                    parse_kept=partial(Parsed, name=name, shown=shown, wanted=wanted),
                    # A .zst body arriving slowly is decompressed (or read through the
                    # window) meanwhile.
                    decoding=_alongside(shown, wanted) if zst and read is None else None,
                    parse_decoded=partial(_read_now, name=name, shown=shown),
                )
            except NotFound:
                continue
            unchanged = fetched.not_modified or (
                offered is not None and offered.sha256 == fetched.validators.sha256
            )
            return Metadata(subdir, name, fetched.body, fetched.validators, parsed, unchanged)
        raise NotFound(f"{self.shown(subdir, 'repodata.json')}: not found (404)")

    def _local(
        self,
        subdir: str,
        offered: Metadata | None,
        wanted: Callable[[str], bool] | None,
        read: Reading | None,
    ) -> Metadata:
        assert self.http.local_root is not None
        folder = self.http.local_root / subdir
        for name in REPODATA_NAMES:
            path = folder / name
            try:
                body = self.http.read_local(path, str(path), transport.MAX_REPODATA_BYTES)
            except NotFound:
                continue
            validators = body_validators(body, {}, str(path))
            parsed = _read_with(read, body, name=name, shown=str(path), wanted=wanted)
            unchanged = offered is not None and offered.sha256 == validators.sha256
            return Metadata(subdir, name, body, validators, parsed, unchanged)
        raise NotFound(f"{folder / 'repodata.json'}: not found")

    def cached(self, subdir: str, sha256: str) -> Metadata | None:
        """The copy in the cache directory if it has exactly that digest (no network)."""
        for name in REPODATA_NAMES:
            kept = self.http.kept(f"{subdir}/{name}")
            if kept is not None and kept.validators.sha256 == sha256:
                parsed = Parsed(kept.body, name, self.shown(subdir, name))
                return Metadata(subdir, name, kept.body, kept.validators, parsed, True)
        return None

    def fetcher(
        self, subdir: str, filename: str, size: int | None, sha256: str | None
    ) -> Callable[[IO[bytes]], int]:
        """What the download executor calls to stream one package into a file, verified."""

        def fetch(out: IO[bytes]) -> int:
            return self.http.download(f"{subdir}/{filename}", out, size, sha256)

        return fetch

    def close(self) -> None:
        self.http.close()


# -- snapshots: the metadata a mirror's last apply used, kept with the channel -------------


def _snapshot_keys(mirror: str, subdir: str, name: str) -> tuple[str, str]:
    prefix = layout.snapshot_prefix(mirror, subdir)
    return f"{prefix}/{name}", f"{prefix}/{name}.validators.json"


def read_snapshot(store: Store, mirror: str, subdir: str) -> Metadata | None:
    """The metadata the mirror's last apply used for ``subdir`` (None: none kept, or damaged)."""
    for name in REPODATA_NAMES:
        body_key, meta_key = _snapshot_keys(mirror, subdir, name)
        try:
            body = store.read(body_key, limit=transport.MAX_REPODATA_BYTES)
            meta = store.read(meta_key)
        except ReconcileError:
            continue
        if body is None or meta is None:
            continue
        try:
            validators = Validators.from_json(orjson.loads(meta))
        except ValueError:
            continue
        if validators is None or hashlib.sha256(body).hexdigest() != validators.sha256:
            continue  # torn or edited: as if none were kept
        # Its digest is the one recorded when it was read and kept: it reads the same.
        parsed = Parsed(body, name, store.describe(body_key))
        return Metadata(subdir, name, body, validators, parsed, True)
    return None


def write_snapshot(store: Store, mirror: str, metadata: Metadata) -> None:
    """Keep what the mirror used (the validators last: a reader checks the digest)."""
    body_key, meta_key = _snapshot_keys(mirror, metadata.subdir, metadata.name)
    store.write_if_changed(body_key, metadata.body)
    store.write_if_changed(meta_key, orjson.dumps(metadata.validators.to_json()))
    for other in REPODATA_NAMES:
        if other != metadata.name:
            for key in _snapshot_keys(mirror, metadata.subdir, other):
                store.delete(key)
