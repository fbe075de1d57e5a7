"""A channel under test wherever it lives (a folder or a bucket), and the invariants
every published channel keeps, checked through its store."""

from __future__ import annotations

import bz2
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import zstandard

from reconciler.conda.shards import read_shard, read_shard_index
from reconciler.store import open_store
from reconciler.store.base import Store

REPODATA_FILES = (
    "repodata.json",
    "repodata.json.zst",
    "repodata.json.bz2",
    "repodata_from_packages.json",
    "current_repodata.json",
)


class Channel:
    """A channel's location for the configuration, and its store for the assertions."""

    def __init__(self, where: str, folder: Path | None) -> None:
        self.where = where  # what channels.yaml says: ./name or s3://bucket/name
        self.folder = folder  # on disk; None in a bucket
        self.store: Store = open_store(folder if folder is not None else where)

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def read(self, key: str) -> bytes | None:
        return self.store.read(key)

    def json(self, key: str) -> Any:
        data = self.read(key)
        assert data is not None, f"{key} is missing"
        return json.loads(data)

    def exists(self, key: str) -> bool:
        return self.store.stat(key) is not None

    def names(self, folder: str) -> list[str]:
        return [info.name for info in self.store.list_files(folder)]

    def put(self, key: str, data: bytes) -> None:
        """Place a file by hand (a local package dropped into the channel)."""
        self.store.write(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, path.read_bytes())


def index_records(repodata: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    """The records of a repodata document or shard, by filename (both sections)."""
    found: dict[str, Mapping[str, object]] = {}
    for section in ("packages", "packages.conda"):
        value = repodata.get(section) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{section} is not a mapping")
        found.update(value)
    return found


def decode_index(name: str, data: bytes) -> dict[str, object]:
    """A published JSON index file (plain, ``.zst`` or ``.bz2``) as a mapping."""
    if name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif name.endswith(".bz2"):
        data = bz2.decompress(data)
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def conda_problems(
    store: Store, subdirs: Iterable[str], may_be_missing: Iterable[str] = ()
) -> list[str]:
    """What a conda client would trip over: an index naming an object that is missing,
    or whose bytes are not the record's."""
    problems: list[str] = []
    missing_ok = set(may_be_missing)
    digests: dict[str, tuple[int, str]] = {}

    def digest(key: str) -> tuple[int, str] | None:
        if key not in digests:
            data = store.read(key)
            if data is None:
                return None
            digests[key] = (len(data), hashlib.sha256(data).hexdigest())
        return digests[key]

    def check(subdir: str, source: str, records: Mapping[str, Mapping[str, object]]) -> None:
        for filename, record in records.items():
            key = f"{subdir}/{filename}"
            found = digest(key)
            if found is None:
                if key not in missing_ok:
                    problems.append(f"{subdir}/{source} names {filename}, which is missing")
                continue
            if found != (record.get("size"), record.get("sha256")):
                problems.append(f"{key} does not have the size and sha256 {source} records")

    for subdir in subdirs:
        for name in REPODATA_FILES:
            data = store.read(f"{subdir}/{name}")
            if data is not None:
                check(subdir, name, index_records(decode_index(name, data)))
        index = store.read(f"{subdir}/repodata_shards.msgpack.zst")
        if index is not None:
            for package, shard_digest in read_shard_index(index)["shards"].items():
                shard = store.read(f"{subdir}/shards/{shard_digest}.msgpack.zst")
                if shard is None:
                    problems.append(f"{subdir} shard index names a missing shard of {package}")
                elif hashlib.sha256(shard).hexdigest() != shard_digest:
                    problems.append(f"{subdir} shard of {package} does not match its digest")
                else:
                    check(subdir, f"shard {package}", index_records(read_shard(shard)))
    return problems


def pypi_problems(store: Store, may_be_missing: Iterable[str] = ()) -> list[str]:
    """What pip would trip over: a project page naming a file that is missing or other
    bytes, or a root page naming a project without a page."""
    problems: list[str] = []
    missing_ok = set(may_be_missing)
    root = store.read("simple/index.json")
    if root is None:
        return problems
    for project in json.loads(root)["projects"]:
        name = project["name"]
        page = store.read(f"simple/{name}/index.json")
        if page is None:
            problems.append(f"the root page names {name}, which has no page")
            continue
        for entry in json.loads(page)["files"]:
            key = f"packages/{name}/{entry['filename']}"
            data = store.read(key)
            if data is None:
                if f"{name}/{entry['filename']}" not in missing_ok:
                    problems.append(f"{name}'s page names {entry['filename']}, which is missing")
            elif hashlib.sha256(data).hexdigest() != entry["hashes"]["sha256"]:
                problems.append(f"{key} is not the bytes its page records")
    return problems
