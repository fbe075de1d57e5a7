"""A plan whose upstream and configuration did not change reuses the previous selection."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from reconciler.config.models import Channel, load_config
from reconciler.kinds.conda import selection_cache
from reconciler.kinds.conda.mirrors import Resolution, resolve_mirrors
from reconciler.store import channel_store
from tests.http_server import serve_directory


def record(name: str, version: str, subdir: str, licence: str = "MIT") -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "build": "h0_0",
        "build_number": 0,
        "depends": ["dep >=1"] if name == "app" else [],
        "license": licence,
        "sha256": "ab" * 32,
        "size": 100,
        "subdir": subdir,
        "timestamp": 1_700_000_000_000,
    }


def write_upstream(root: Path, extra: str = "") -> None:
    for subdir in ("linux-64", "noarch"):
        packages: dict[str, Any] = {}
        for name in ("app", "dep", "other", "gpl", extra):
            if not name:
                continue
            for version in ("1.0", "2.0", "3.0"):
                packages[f"{name}-{version}-h0_0.conda"] = record(
                    name, version, subdir, "GPL-3.0-only" if name == "gpl" else "MIT"
                )
        # An unsafe filename under a name the mirror includes: read, refused, warned about;
        # under one it does not, never read (it could not be selected).
        packages["app-9.0-h0/../../evil.conda"] = record("app", "9.0", subdir)
        packages["../evil-1.0-h0_0.conda"] = record("evil", "1.0", subdir)
        packages["nosha-1.0-h0_0.conda"] = {**record("app", "0.1", subdir), "sha256": None}
        body = json.dumps(
            {
                "info": {"subdir": subdir},
                "packages": {},
                "packages.conda": packages,
                "removed": ["old-1.0-h0_0.conda"],
            }
        ).encode()
        (root / subdir).mkdir(parents=True, exist_ok=True)
        (root / subdir / "repodata.json.zst").write_bytes(
            zstandard.ZstdCompressor(write_content_size=True).compress(body)
        )


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "upstream"
    write_upstream(root)
    with serve_directory(root) as (url, _):
        yield root, url


def channel(tmp_path: Path, url: str, latest: int = 2) -> Channel:
    config = tmp_path / "channels.yaml"
    config.write_text(
        f"""version: 1
channels:
  - name: c
    path: {tmp_path / "channel"}
    subdirs: [linux-64, noarch]
    filters:
      exclude: [{{license: GPL}}]
    mirrors:
      - name: up
        source: {url}
        mode: passive
        filters:
          include: [{{name: app}}, {{name: gpl}}]
          latest: {latest}
          dependencies: true
"""
    )
    found = load_config(config).config.channels[0]
    assert isinstance(found, Channel)
    return found


def resolve(chan: Channel, cache: Path) -> Resolution:
    return resolve_mirrors(
        chan,
        0,
        channel_store(chan),
        config_dir=None,
        cache_dir=cache,
        refresh=["up"],
        scope=None,
    )


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "conda" / "selections").glob("*.json"))


def summary(resolution: Resolution) -> dict[str, Any]:
    state = resolution.mirrors[0]
    assert state.selection is not None
    return {
        "records": {s: {f: r.record for f, r in m.items()} for s, m in resolution.records.items()},
        "removed": resolution.removed,
        "warnings": [w.message for w in resolution.warnings],
        "selected": state.selection.selected,
        "decisions": {k: (d.selected, d.reason) for k, d in state.selection.decisions.items()},
        "records_all": dict(state.selection.records),
    }


def test_the_reused_selection_is_the_fresh_one(
    tmp_path: Path, upstream: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = upstream
    chan = channel(tmp_path, url)
    cache = tmp_path / "cache"
    first = resolve(chan, cache)
    assert len(entries(cache)) == 1
    fresh = summary(first)
    assert fresh["selected"]
    assert any("refusing 'app-9.0-h0/../../evil.conda'" in w for w in fresh["warnings"])
    assert not any("../evil-1.0" in w for w in fresh["warnings"])

    # The second plan (a 304) selects nothing anew for what it is asked...
    calls: list[int] = []
    real = selection_cache.load

    def counting(*args: Any) -> Any:
        chosen = real(*args)
        calls.append(0 if chosen is None else 1)
        return chosen

    monkeypatch.setattr(selection_cache, "load", counting)
    again = resolve(chan, cache)
    assert calls == [1]
    state = again.mirrors[0]
    assert state.metadata["linux-64"].not_modified
    # ... and gives what the first did, down to every decision (those worked out anew).
    assert summary(again) == fresh

    # A third plan with no cache at all agrees too.
    assert summary(resolve(chan, tmp_path / "other-cache")) == fresh


def test_a_change_of_configuration_or_upstream_selects_anew(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    root, url = upstream
    cache = tmp_path / "cache"
    resolve(channel(tmp_path, url), cache)
    assert len(entries(cache)) == 1

    changed = resolve(channel(tmp_path, url, latest=1), cache)
    assert len(entries(cache)) == 2
    assert summary(changed) == summary(resolve(channel(tmp_path, url, latest=1), tmp_path / "c2"))

    write_upstream(root, extra="app2")
    for body in root.glob("*/repodata.json.zst"):  # the test server's validator: the mtime
        os.utime(body, (body.stat().st_mtime + 10,) * 2)
    moved = resolve(channel(tmp_path, url), cache)
    assert len(entries(cache)) == 3
    assert not moved.mirrors[0].metadata["linux-64"].not_modified
    assert summary(moved) == summary(resolve(channel(tmp_path, url), tmp_path / "c3"))


def test_a_damaged_entry_is_ignored(tmp_path: Path, upstream: tuple[Path, str]) -> None:
    _, url = upstream
    cache = tmp_path / "cache"
    chan = channel(tmp_path, url)
    fresh = summary(resolve(chan, cache))
    for entry in entries(cache):
        entry.write_bytes(b'{"selected": [["linux-64"]]}')
    assert summary(resolve(chan, cache)) == fresh
