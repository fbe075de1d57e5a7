"""A channel in S3-compatible object storage: ``s3://bucket/prefix``.

The same guarantees as a channel folder, with what a bucket offers instead of a
file system:

- **atomic writes**: an object is replaced whole by one ``PutObject`` (a large
  download by one multipart upload, completed at once), so a client reads the
  old bytes or the new ones;
- **conditional writes** detect a concurrent writer: a new object is created with
  ``If-None-Match: *`` (a ``412`` on an object that already holds the same bytes
  is success), an index file is replaced with ``If-Match`` the ETag seen when the
  plan was made, and a deletion is ``If-Match`` too. A ``412`` or ``409`` is
  :class:`~reconciler.store.base.PreconditionFailed`: another writer won;
- **a lease instead of a lock**: ``.reconciler/lease.json``, created with
  ``If-None-Match: *``, renewed in the background with ``If-Match``, taken over
  with ``If-Match`` once expired (by the server's clock: its ``Last-Modified``
  against its ``Date``; at once when its holder ran on this machine and is gone, as
  a killed run's), released with a conditional delete. Its generation (a
  counter in ``.reconciler/lease-generation``, incremented with ``If-Match`` by
  each new holder) is a fencing token: it grows with every holder, and a holder
  that lost its lease stops before its next write;
- **history without append**: one object per line under ``<log>.d/``, with keys
  that sort by time, merged into segments by :meth:`S3Store.compact_lines`;
- **Cache-Control on upload**: packages and shards ``immutable``, index files and
  pages ``max-age`` (configurable), the tool's own files ``no-store``.

``storage.conditional_writes: false`` is for S3 clones that refuse the
conditional headers: the conditions are then checked with a ``HEAD`` before the
write, which is not atomic, and only a single writer may ever run.

Only this module imports boto3 (the import contracts in pyproject.toml say so):
it is the store's transport to the bucket. Endpoint, region, addressing style and
credentials come from the standard AWS chain and environment (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3``, ...), overridable per channel.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import email.utils
import hashlib
import io
import json
import logging
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.config
import botocore.exceptions

from reconciler.config.models import DEFAULT_INDEX_MAX_AGE, S3Location, StorageOptions
from reconciler.faults import checkpoint
from reconciler.store.base import (
    LockHolder,
    LockTimeout,
    ObjectInfo,
    PreconditionFailed,
    StorageError,
    Store,
    Writer,
    check_key,
)
from reconciler.store.local import remove_dead_temporaries

log = logging.getLogger(__name__)

LEASE_KEY = ".reconciler/lease.json"
# The last lease generation handed out: a counter only lease holders increment, so
# generations grow strictly across holders although a released lease is deleted.
GENERATION_KEY = ".reconciler/lease-generation"
PRIVATE_PREFIX = ".reconciler/"
PRIVATE = "no-store"
# Below this, one PutObject; above, a multipart upload in parts of PART_SIZE.
MULTIPART_THRESHOLD = 256 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024
# A log with more pieces than this is merged into one segment (under the lock).
COMPACT_AFTER = 64
SEGMENT_PREFIX = "seg-"
# Temporary files of writers on the local disk, and multipart uploads a crashed run
# left: the uploads are aborted once older than this.
TEMP_PREFIX = "reconcile-s3-"
STALE_UPLOAD = 3600.0
# Index files and pages: they change on every publish.
_SHORT_SUFFIXES = (".json", ".json.zst", ".json.bz2", ".html")
_SHORT_NAMES = frozenset({"repodata_shards.msgpack.zst"})
_TYPES = {
    ".json": "application/json",
    ".zst": "application/zstd",
    ".bz2": "application/x-bzip2",
    ".html": "text/html; charset=utf-8",
    ".jsonl": "application/x-ndjson",
}
# Conditions lost: 412, or 409 when two conditional writes race on AWS.
_LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def cache_control(key: str, max_age: int = DEFAULT_INDEX_MAX_AGE, *, private: bool = False) -> str:
    """What ``Cache-Control`` an object gets: index files short-lived, the rest immutable;
    a private channel's for the client's own cache only."""
    if key.startswith(PRIVATE_PREFIX):
        return PRIVATE
    scope = "private" if private else "public"
    name = key.rpartition("/")[2]
    if name in _SHORT_NAMES or name.endswith(_SHORT_SUFFIXES):
        return f"{scope}, max-age={max_age}"
    return f"{scope}, max-age=31536000, immutable"


def content_type(key: str) -> str:
    name = key.rpartition("/")[2]
    for suffix, kind in _TYPES.items():
        if name.endswith(suffix):
            return kind
    return "application/octet-stream"


def make_client(options: StorageOptions | None = None) -> Any:
    """A boto3 S3 client for these settings (one per process and settings: thread-safe)."""
    options = options or StorageOptions()
    key = (
        options.endpoint_url,
        options.region,
        options.addressing_style,
        os.environ.get("AWS_PROFILE"),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
        os.environ.get("AWS_ACCESS_KEY_ID"),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        try:
            session = boto3.session.Session()
        except botocore.exceptions.ProfileNotFound as exc:
            raise StorageError(str(exc), hint="set AWS_PROFILE to a profile that exists") from None
        region = options.region or session.region_name or "us-east-1"
        s3: Any = (
            {"addressing_style": options.addressing_style} if options.addressing_style else None
        )
        config = botocore.config.Config(
            region_name=region,
            s3=s3,
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=32,
            connect_timeout=10,
            read_timeout=120,
            # CRC checksums only where S3 requires them: several S3 clones refuse them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = session.client("s3", endpoint_url=options.endpoint_url, config=config)
        _clients[key] = client
        return client


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_lost(exc: botocore.exceptions.ClientError) -> bool:
    return _code(exc) in _LOST or _status(exc) in (409, 412)


def _is_missing(exc: botocore.exceptions.ClientError) -> bool:
    return _code(exc) in _MISSING or _status(exc) == 404


def _server_time(response: dict[str, Any]) -> float | None:
    """The server's clock at the response (its Date header), as a timestamp."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def _md5_file(path: Path) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _quoted(md5_hex: str) -> str:
    return f'"{md5_hex}"'


class _BodyReader(io.RawIOBase):
    """A botocore streaming body as a raw stream (wrapped in a BufferedReader: IO[bytes])."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        try:
            data = self.body.read(len(view))
        except OSError:
            raise
        except Exception as exc:  # botocore's and urllib3's: a broken body is an I/O error
            raise OSError(f"reading from the bucket failed: {exc}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
        super().close()


@dataclass(frozen=True)
class _LeaseRecord:
    holder: LockHolder
    generation: int
    ttl: float
    etag: str
    modified: float  # the server's time of the last renewal
    server_now: float  # the server's time when it was read
    node: str | None = None  # where the holder runs: boot and pid namespace

    @property
    def expired(self) -> bool:
        return self.server_now - self.modified > self.ttl

    @property
    def holder_died_here(self) -> bool:
        """The holder ran on this machine, in this pid namespace, and is gone: a killed
        run's lease is taken over at once instead of after its TTL."""
        return self.node is not None and self.node == _node() and not _alive(self.holder.pid)


def _node() -> str | None:
    """This machine's boot and pid namespace: where a pid means the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class _Lease:
    """A lease this process holds, renewed in a background thread."""

    def __init__(self, store: S3Store, holder: LockHolder, etag: str, ttl: float) -> None:
        self.store = store
        self.holder = holder
        self.etag = etag
        self.ttl = ttl
        self.renewed = time.monotonic()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="reconcile-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew()

    def renew(self) -> None:
        with self._lock:
            if self.lost is not None:
                return
            try:
                self.etag = self.store._put_lease(self.holder, if_match=self.etag)
                self.renewed = time.monotonic()
            except PreconditionFailed:
                self.lost = "another run took the channel's lease over"
                log.error("%s: %s", self.store.location, self.lost)
            except StorageError as exc:
                if time.monotonic() - self.renewed > self.ttl:
                    self.lost = f"the lease could not be renewed in time ({exc.message})"
                    log.error("%s: %s", self.store.location, self.lost)
                else:
                    log.warning("%s: lease not renewed yet: %s", self.store.location, exc.message)

    def check(self) -> None:
        """Raise when the lease is lost (or about to run out without a renewal)."""
        if self.lost is None and time.monotonic() - self.renewed > self.ttl * 0.9:
            self.renew()
        if self.lost is not None:
            raise StorageError(
                f"{self.store.location}: stopped before writing: {self.lost}",
                hint="another run may be writing the channel; run apply again to converge",
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _S3Writer(Writer):
    """A local temporary file, uploaded under the key on :meth:`commit`."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        self.path = Path(name)
        self.handle = os.fdopen(fd, "w+b")
        self._done = False

    def commit(self, step: str | None = None) -> ObjectInfo:
        try:
            self.handle.flush()
            self.handle.close()
            info = self.store._upload(self.key, self.path, step)
        except BaseException:
            self.abort()
            raise
        self._done = True
        with contextlib.suppress(OSError):
            self.path.unlink()
        return info

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class S3Store(Store):
    """A channel under ``s3://bucket/prefix`` (see the module docstring)."""

    def __init__(
        self,
        location: S3Location,
        options: StorageOptions | None = None,
        *,
        index_max_age: int = DEFAULT_INDEX_MAX_AGE,
        private: bool = False,
        client: Any = None,
    ) -> None:
        self.where = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.location = str(location)
        self.options = options or StorageOptions()
        self.index_max_age = index_max_age
        self.private = private  # a private channel: no shared cache may keep its objects
        self.conditional = self.options.conditional_writes
        self._client = client
        self._lease: _Lease | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.options)
        return self._client

    # -- names ---------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folder(self, prefix: str) -> str:
        """The object-key prefix of a folder key ("" for the channel's top)."""
        if prefix:
            check_key(prefix)
        parts = [p for p in (self.prefix, prefix) if p]
        return "/".join(parts) + "/" if parts else ""

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # -- errors --------------------------------------------------------------------------

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        where = self.describe(key) if key else self.location
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                return StorageError(
                    f"cannot {action} {where}: the bucket {self.bucket} does not exist",
                    hint="create the bucket, or correct the channel's path",
                )
            if code in ("AccessDenied", "403", "AllAccessDisabled") or _status(exc) == 403:
                return StorageError(
                    f"cannot {action} {where}: access denied",
                    hint="check the credentials in the environment (AWS_PROFILE, "
                    "AWS_ACCESS_KEY_ID, the job's role) and the bucket's policy",
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return StorageError(
                    f"cannot {action} {where}: the credentials were refused ({code})",
                    hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
                )
            if code in ("NotImplemented", "InvalidArgument") and self.conditional:
                return StorageError(
                    f"cannot {action} {where}: {message} ({code})",
                    hint="if this S3 clone does not support conditional writes, set "
                    "storage.conditional_writes: false, and run a single writer only",
                )
            return StorageError(f"cannot {action} {where}: {message} ({code})")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageError(
                f"cannot {action} {where}: no AWS credentials found",
                hint="set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "run where a role provides them (aws-actions/configure-aws-credentials)",
            )
        if isinstance(exc, botocore.exceptions.EndpointConnectionError):
            return StorageError(
                f"cannot {action} {where}: cannot reach the endpoint ({exc})",
                hint="check storage.endpoint_url / AWS_ENDPOINT_URL_S3 and the network",
            )
        return StorageError(f"cannot {action} {where}: {exc}")

    def _call(self, action: str, key: str, operation: Callable[..., Any], **params: Any) -> Any:
        try:
            return operation(Bucket=self.bucket, **params)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if isinstance(exc, botocore.exceptions.ClientError) and (
                _is_lost(exc) or _is_missing(exc)
            ):
                raise
            raise self._error(action, key, exc) from None

    def _fence(self) -> None:
        if self._lease is not None:
            self._lease.check()

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        response = self._call(
            "list",
            "",
            self.client.list_objects_v2,
            Prefix=self._folder(""),
            MaxKeys=1,
        )
        return bool(response.get("KeyCount", 0))

    def _list(self, prefix: str) -> tuple[list[ObjectInfo], list[str]]:
        folder = self._folder(prefix)
        files: list[ObjectInfo] = []
        dirs: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": folder, "Delimiter": "/"}
            if token:
                params["ContinuationToken"] = token
            try:
                response = self._call("list", prefix, self.client.list_objects_v2, **params)
            except botocore.exceptions.ClientError as exc:
                raise self._error("list", prefix, exc) from None
            for item in response.get("Contents", ()):
                name = item["Key"][len(folder) :]
                if not name or "/" in name:
                    continue  # a folder marker
                key = f"{prefix}/{name}" if prefix else name
                modified = item.get("LastModified")
                files.append(
                    ObjectInfo(
                        key,
                        int(item["Size"]),
                        str(item["ETag"]),
                        True,
                        modified.timestamp() if modified else None,
                    )
                )
            for common in response.get("CommonPrefixes", ()):
                name = common["Prefix"][len(folder) :].rstrip("/")
                if name and name not in (".", ".."):
                    dirs.append(name)
            if not response.get("IsTruncated"):
                break
            token = response.get("NextContinuationToken")
        files.sort(key=lambda info: info.key)
        return files, sorted(dirs)

    def list_files(self, prefix: str = "") -> list[ObjectInfo]:
        return self._list(prefix)[0]

    def listing(self, prefix: str = "") -> tuple[list[ObjectInfo], list[str]]:
        return self._list(prefix)

    def list_dirs(self, prefix: str = "") -> list[str]:
        return self._list(prefix)[1]

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = self._call(
                "read", key, self.client.head_object, Key=self._full(key)
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._error("read", key, exc) from None
        return response

    def stat(self, key: str) -> ObjectInfo | None:
        response = self._head(key)
        if response is None:
            return None
        modified = response.get("LastModified")
        return ObjectInfo(
            key,
            int(response["ContentLength"]),
            str(response["ETag"]),
            True,
            modified.timestamp() if modified else None,
        )

    def _get(self, key: str, **params: Any) -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = self._call(
                "read", key, self.client.get_object, Key=self._full(key), **params
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            if _is_lost(exc):
                raise PreconditionFailed(f"{self.describe(key)} changed") from None
            raise self._error("read", key, exc) from None
        return response

    def read(self, key: str, *, limit: int | None = None) -> bytes | None:
        response = self._get(key)
        if response is None:
            return None
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if limit is not None and size > limit:
                raise StorageError(
                    f"cannot read {self.describe(key)}: {size} bytes, more than the {limit} allowed"
                )
            data: bytes = body.read()
            return data
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._error("read", key, exc) from None
        finally:
            body.close()

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        response = self._get(key)
        if response is None:
            raise FileNotFoundError(key)
        with io.BufferedReader(_BodyReader(response["Body"]), 1024 * 1024) as handle:
            yield handle

    @contextlib.contextmanager
    def open_range(
        self, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> Iterator[IO[bytes]]:
        params: dict[str, Any] = {"Range": f"bytes={start}-{end}"}
        if if_match is not None:
            params["IfMatch"] = if_match
        response = self._get(key, **params)
        if response is None:
            raise FileNotFoundError(key)
        with io.BufferedReader(_BodyReader(response["Body"]), 256 * 1024) as handle:
            yield handle

    def presign(self, key: str, expires: int) -> str | None:
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._full(key)},
                ExpiresIn=expires,
            )
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("sign a URL for", key, exc) from None
        return url

    # -- writing -------------------------------------------------------------------------

    def _check_emulated(self, key: str, if_match: str | None, if_absent: bool) -> None:
        """The conditions, checked with a HEAD before writing: not atomic (single writer)."""
        info = self.stat(key)
        if if_absent and info is not None:
            raise PreconditionFailed(f"{self.describe(key)} already exists")
        if if_match is not None and (info is None or info.tag != if_match):
            raise PreconditionFailed(f"{self.describe(key)} changed since it was read")

    def _put(
        self,
        key: str,
        body: bytes | IO[bytes],
        md5_hex: str,
        *,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """One PutObject; its ETag. :class:`PreconditionFailed` when a condition lost."""
        params: dict[str, Any] = {
            "Key": self._full(key),
            "Body": body,
            "ContentMD5": base64.b64encode(bytes.fromhex(md5_hex)).decode(),
            "CacheControl": cache_control(key, self.index_max_age, private=self.private),
            "ContentType": content_type(key),
        }
        if self.conditional:
            if if_match is not None:
                params["IfMatch"] = if_match
            elif if_absent:
                params["IfNoneMatch"] = "*"
        elif if_match is not None or if_absent:
            self._check_emulated(key, if_match, if_absent)
        try:
            response = self._call("write", key, self.client.put_object, **params)
        except botocore.exceptions.ClientError as exc:
            if _is_lost(exc) or (if_match is not None and _is_missing(exc)):
                raise PreconditionFailed(
                    f"{self.describe(key)} was changed by another writer"
                ) from None
            raise self._error("write", key, exc) from None
        return str(response.get("ETag") or _quoted(md5_hex))

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_absent: bool = False,
        durable: bool = True,
        step: str | None = None,
    ) -> ObjectInfo:
        check_key(key)
        self._fence()
        md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
        checkpoint("storage.before_put")
        if step is not None:
            checkpoint(step)
        etag = self._put(key, data, md5_hex, if_match=if_match, if_absent=if_absent)
        checkpoint("storage.put")
        return ObjectInfo(key, len(data), etag, True, time.time())

    def write_if_changed(self, key: str, data: bytes, **options: Any) -> bool:
        info = self.stat(key)
        if info is not None and self.same_bytes(info, data):
            return False
        self.write(key, data, **options)
        return True

    def same_bytes(self, info: ObjectInfo, data: bytes) -> bool:
        if info.size != len(data):
            return False
        md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if info.tag == _quoted(md5_hex):
            return True  # a simple upload's ETag is its MD5: no need to read it back
        # Another ETag of the same size: other bytes, or an ETag that is not their MD5
        # (multipart, encrypted with KMS). Rare for a plain upload: compare the bytes.
        try:
            return self.read(info.key) == data
        except StorageError:
            return False

    def writer(self, key: str) -> _S3Writer:
        check_key(key)
        try:
            return _S3Writer(self, key)
        except OSError as exc:
            raise StorageError(f"cannot write a temporary file for {self.describe(key)}: "
                               f"{exc.strerror or exc}") from None  # fmt: skip

    def _upload(self, key: str, path: Path, step: str | None) -> ObjectInfo:
        """Put a written temporary file under ``key``: created with ``If-None-Match: *``;
        an object already there with the same bytes is success, one with other bytes is
        replaced with ``If-Match`` its ETag (the caller unpublished it first)."""
        self._fence()
        md5_hex, size = _md5_file(path)
        checkpoint("storage.before_put")
        if step is not None:
            checkpoint(step)
        try:
            etag = self._upload_file(key, path, md5_hex, size, if_absent=True)
        except PreconditionFailed:
            existing = self.stat(key)
            if existing is None:  # deleted in between: try once more
                etag = self._upload_file(key, path, md5_hex, size, if_absent=True)
            elif existing.size == size and self._same_object(key, existing, path, md5_hex):
                etag = existing.tag  # the same bytes are already there: that is success
            else:
                log.info("replacing %s (other bytes)", self.describe(key))
                etag = self._upload_file(key, path, md5_hex, size, if_match=existing.tag)
        checkpoint("storage.put")
        return ObjectInfo(key, size, etag, True, time.time())

    def _same_object(self, key: str, existing: ObjectInfo, path: Path, md5_hex: str) -> bool:
        if existing.tag == _quoted(md5_hex):
            return True
        ours = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                ours.update(chunk)
        theirs = hashlib.sha256()
        try:
            with self.open(key) as handle:
                while chunk := handle.read(1024 * 1024):
                    theirs.update(chunk)
        except FileNotFoundError:
            return False
        return ours.digest() == theirs.digest()

    def _upload_file(
        self,
        key: str,
        path: Path,
        md5_hex: str,
        size: int,
        *,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> str:
        if size <= MULTIPART_THRESHOLD:
            with path.open("rb") as handle:
                return self._put(key, handle, md5_hex, if_match=if_match, if_absent=if_absent)
        return self._multipart(key, path, size, if_match=if_match, if_absent=if_absent)

    def _multipart(
        self, key: str, path: Path, size: int, *, if_match: str | None, if_absent: bool
    ) -> str:
        """A multipart upload, completed (atomically) with the same conditions as a put."""
        if not self.conditional and (if_match is not None or if_absent):
            self._check_emulated(key, if_match, if_absent)
        full = self._full(key)
        created = self._call(
            "write",
            key,
            self.client.create_multipart_upload,
            Key=full,
            CacheControl=cache_control(key, self.index_max_age, private=self.private),
            ContentType=content_type(key),
        )
        upload_id = created["UploadId"]
        parts = []
        try:
            with path.open("rb") as handle:
                number = 1
                while chunk := handle.read(PART_SIZE):
                    self._fence()
                    digest = hashlib.md5(chunk, usedforsecurity=False).digest()
                    part = self._call(
                        "write",
                        key,
                        self.client.upload_part,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ContentMD5=base64.b64encode(digest).decode(),
                    )
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
                    number += 1
            params: dict[str, Any] = {
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if self.conditional and if_match is not None:
                params["IfMatch"] = if_match
            elif self.conditional and if_absent:
                params["IfNoneMatch"] = "*"
            self._fence()
            done = self._call("write", key, self.client.complete_multipart_upload, **params)
        except botocore.exceptions.ClientError as exc:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            if _is_lost(exc) or (if_match is not None and _is_missing(exc)):
                raise PreconditionFailed(
                    f"{self.describe(key)} was changed by another writer"
                ) from None
            raise self._error("write", key, exc) from None
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        return str(done.get("ETag", ""))

    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        check_key(key)
        self._fence()
        if if_match is None:
            info = self.stat(key)
            if info is None:
                return False
            # Only the object that was there: a writer replacing it meanwhile wins.
            if_match = info.tag
        params: dict[str, Any] = {"Key": self._full(key)}
        if self.conditional:
            params["IfMatch"] = if_match
        else:
            info = self.stat(key)
            if info is None:
                return False
            if info.tag != if_match:
                raise PreconditionFailed(f"{self.describe(key)} changed since it was read")
        try:
            self._call("remove", key, self.client.delete_object, **params)
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return False
            if _is_lost(exc):
                raise PreconditionFailed(
                    f"{self.describe(key)} changed since it was read"
                ) from None
            raise self._error("remove", key, exc) from None
        checkpoint("storage.removed")
        return True

    # -- logs: one object per line -----------------------------------------------------

    def _log_prefix(self, key: str) -> str:
        return f"{key}.d"

    def append_line(self, key: str, line: bytes) -> None:
        check_key(key)
        stamp = f"{time.time_ns():020d}-{secrets.token_hex(6)}"
        self.write(f"{self._log_prefix(key)}/{stamp}", line, if_absent=True)

    def _log_pieces(self, key: str) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
        """(segments, line objects) of a log, each sorted by key."""
        pieces = self._list_all(self._log_prefix(key))
        segments = [p for p in pieces if p.name.startswith(SEGMENT_PREFIX)]
        lines = [p for p in pieces if not p.name.startswith(SEGMENT_PREFIX)]
        return segments, lines

    def _list_all(self, prefix: str) -> list[ObjectInfo]:
        """Every object directly under ``prefix``: the log pieces."""
        return self.list_files(prefix)

    def _read_pieces(self, key: str) -> tuple[dict[str, bytes], list[ObjectInfo], list[ObjectInfo]]:
        """name → line of every line of the log, with the pieces they came from."""
        segments, lines = self._log_pieces(key)
        found: dict[str, bytes] = {}
        bodies = self._read_many([p.key for p in segments + lines])
        for piece in segments:
            for raw in (bodies.get(piece.key) or b"").splitlines(keepends=True):
                name, _, line = raw.partition(b" ")
                if line:
                    found.setdefault(name.decode("ascii", "replace"), line)
        for piece in lines:
            data = bodies.get(piece.key)
            if data is not None:
                found[piece.name] = data
        return found, segments, lines

    def _read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        if len(keys) <= 1:
            return {k: self.read(k) for k in keys}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            return dict(zip(keys, pool.map(self.read, keys), strict=True))

    def read_lines(self, key: str) -> Iterator[bytes]:
        check_key(key)
        # A log copied from a folder (a channel moved into the bucket) comes first.
        whole = self.read(key)
        if whole:
            yield from whole.splitlines(keepends=True)
        found, _, _ = self._read_pieces(key)
        for name in sorted(found):
            line = found[name]
            yield line if line.endswith(b"\n") else line + b"\n"

    def compact_lines(self, key: str) -> None:
        """Merge the line objects (and older segments) into one new segment, then delete
        what it merged. Readers take the union, so a crash in between loses nothing."""
        check_key(key)
        found, segments, lines = self._read_pieces(key)
        if len(lines) < COMPACT_AFTER:
            return
        body = b"".join(
            name.encode() + b" " + (line if line.endswith(b"\n") else line + b"\n")
            for name, line in sorted(found.items())
        )
        last = max(found)
        segment = f"{self._log_prefix(key)}/{SEGMENT_PREFIX}{last}-{secrets.token_hex(4)}"
        self.write(segment, body, if_absent=True)
        for piece in [*lines, *segments]:
            with contextlib.suppress(PreconditionFailed):
                self.delete(piece.key, if_match=piece.tag)

    # -- leftovers -----------------------------------------------------------------------

    def clean_temporaries(self, prefix: str = "") -> int:
        """Abort multipart uploads older than an hour under ``prefix``, and remove local
        temporary files of writers that died."""
        removed = _clean_local_temporaries()
        folder = self._folder(prefix)
        try:
            response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=folder)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.debug("cannot list multipart uploads of %s: %s", self.location, exc)
            return removed
        now = time.time()
        for upload in response.get("Uploads", ()):
            started = upload.get("Initiated")
            if started is None or now - started.timestamp() < STALE_UPLOAD:
                continue
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                removed += 1
        return removed

    # -- the lease -----------------------------------------------------------------------

    def _read_lease(self) -> _LeaseRecord | None:
        try:
            response = self._call(
                "read", LEASE_KEY, self.client.get_object, Key=self._full(LEASE_KEY)
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._error("read", LEASE_KEY, exc) from None
        body = response["Body"]
        try:
            data = json.loads(body.read())
        except (ValueError, botocore.exceptions.BotoCoreError):
            data = {}
        finally:
            body.close()
        modified = response.get("LastModified")
        now = _server_time(response) or time.time()
        holder = _parse_holder(data.get("holder")) or LockHolder(0, "?", "?", "?")
        try:
            generation = int(data.get("generation", 0))
            ttl = float(data.get("ttl", self.options.lease_ttl))
        except (TypeError, ValueError):
            generation, ttl = 0, 0.0  # unreadable: as if expired
        node = data.get("node")
        return _LeaseRecord(
            holder,
            generation,
            ttl,
            str(response["ETag"]),
            modified.timestamp() if modified else 0.0,
            now,
            node if isinstance(node, str) else None,
        )

    def _put_lease(self, holder: LockHolder, *, if_match: str | None) -> str:
        ttl = self.options.lease_ttl
        expires = datetime.now(timezone.utc).timestamp() + ttl
        body = {
            "holder": {k: v for k, v in holder.__dict__.items() if k not in ("expires",)},
            "generation": holder.generation,
            "node": _node(),
            "ttl": ttl,
            "expires": datetime.fromtimestamp(expires, timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(body, sort_keys=True).encode()
        md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return self._put(LEASE_KEY, data, md5_hex, if_match=if_match, if_absent=if_match is None)

    def _next_generation(self, at_least: int) -> int:
        """Increment the generation counter (holding the lease: nobody else does, but a
        holder that stalled might, so the increment is conditional)."""
        for _ in range(10):
            response = self._get(GENERATION_KEY)
            current, etag = 0, None
            if response is not None:
                etag = str(response["ETag"])
                body = response["Body"]
                try:
                    current = int(body.read().strip() or 0)
                except ValueError:
                    current = 0
                finally:
                    body.close()
            generation = max(current + 1, at_least)
            data = str(generation).encode()
            md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
            try:
                self._put(GENERATION_KEY, data, md5_hex, if_match=etag, if_absent=etag is None)
            except PreconditionFailed:
                continue
            return generation
        raise StorageError(f"{self.location}: the lease generation kept changing")

    def _try_acquire(self, me: LockHolder) -> tuple[LockHolder, str] | LockHolder | None:
        """One attempt: (holder with its generation, ETag) when taken; the current holder
        when held by another run; None when it moved under us (try again at once)."""
        current = self._read_lease()
        if current is not None and not current.expired and not current.holder_died_here:
            expires = datetime.fromtimestamp(current.modified + current.ttl, timezone.utc)
            return replace(
                current.holder,
                generation=current.generation,
                expires=expires.isoformat(timespec="seconds"),
            )
        if current is not None:
            log.warning(
                "%s: taking over the %s lease of %s",
                self.location,
                "expired" if current.expired else "dead holder's",
                current.holder.describe(),
            )
        previous = current.generation if current is not None else 0
        try:
            etag = self._put_lease(
                replace(me, generation=previous),
                if_match=current.etag if current is not None else None,
            )
        except PreconditionFailed:
            return None  # another run was quicker
        # Held: now the generation of this holder, written into the lease at once.
        mine = replace(me, generation=self._next_generation(previous + 1), expires=None)
        try:
            return mine, self._put_lease(mine, if_match=etag)
        except PreconditionFailed:
            return None

    @contextlib.contextmanager
    def lock(self, *, timeout: float, command: str, poll: float = 1.0) -> Iterator[LockHolder]:
        """The channel's lease (see the module docstring); :class:`LockTimeout` when
        another run holds it for longer than ``timeout`` seconds."""
        me = _current_holder(command)
        started = time.monotonic()
        while True:
            attempt = self._try_acquire(me)
            if isinstance(attempt, tuple):
                holder, etag = attempt
                break
            if attempt is not None:
                waited = time.monotonic() - started
                if waited >= timeout:
                    raise LockTimeout(self.location, attempt, waited)
                time.sleep(min(max(poll, 0.05), max(0.05, timeout - waited)))
        checkpoint("lease.taken")
        lease = _Lease(self, holder, etag, self.options.lease_ttl)
        self._lease = lease
        try:
            yield holder
        finally:
            lease.stop()
            self._lease = None
            if lease.lost is None:
                try:
                    self._call(
                        "release",
                        LEASE_KEY,
                        self.client.delete_object,
                        Key=self._full(LEASE_KEY),
                        **({"IfMatch": lease.etag} if self.conditional else {}),
                    )
                except botocore.exceptions.ClientError as exc:
                    log.warning("%s: lease not released: %s", self.location, exc)
                except StorageError as exc:
                    log.warning("%s: lease not released: %s", self.location, exc.message)

    def lock_holder(self) -> LockHolder | None:
        current = self._read_lease()
        if current is None or current.expired or current.holder_died_here:
            return None
        expires = datetime.fromtimestamp(current.modified + current.ttl, timezone.utc)
        return replace(
            current.holder,
            generation=current.generation,
            expires=expires.isoformat(timespec="seconds"),
        )


def _current_holder(command: str | None) -> LockHolder:
    started = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    text = command or " ".join(["reconcile", *sys.argv[1:2]])
    return LockHolder(os.getpid(), platform.node(), text, started)


def _parse_holder(data: Any) -> LockHolder | None:
    if not isinstance(data, dict):
        return None
    try:
        return LockHolder(
            int(data["pid"]), str(data["host"]), str(data["command"]), str(data["started"])
        )
    except (KeyError, TypeError, ValueError):
        return None


def _clean_local_temporaries() -> int:
    return remove_dead_temporaries(TEMP_PREFIX)
