"""End-to-end indexing of real package archives, checked file by file and with a real client."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard

from reconciler.config.models import IndexOptions
from reconciler.kinds.conda.indexer import IndexError_, index_channel
from tests.client import solve
from tests.http_server import serve_directory
from tests.packages import PackageSpec, build_channel, build_package, file_digests

# A dependency chain over two platforms and noarch, both formats, run_exports and features.
SPECS: list[PackageSpec | tuple[PackageSpec, str]] = [
    PackageSpec("base", "1.0", subdir="linux-64", run_exports={"weak": ["base >=1.0"]}),
    (PackageSpec("base", "1.9", build="1", subdir="linux-64"), ".tar.bz2"),
    PackageSpec("base", "1.10", build="0", subdir="linux-64", run_exports={"strong": ["base"]}),
    (PackageSpec("lib", "2.0", subdir="linux-64", depends=["base >=1.9,<1.10"]), ".tar.bz2"),
    PackageSpec("lib", "2.0", subdir="linux-64", depends=["base >=1.9,<1.10"]),
    PackageSpec(
        "app",
        "3.1",
        subdir="linux-64",
        depends=["lib 2.*", "pyhelper"],
        track_features="fancy",
    ),
    PackageSpec("app", "3.1", build="1", subdir="osx-arm64", depends=["pyhelper"]),
    PackageSpec(
        "pyhelper",
        "0.5",
        build="pyhd8ed1ab_0",
        noarch="python",
        depends=["python >=3.8"],
        extra_index={"features": "legacy"},
    ),
    (PackageSpec("data", "2024.1", noarch="generic", license="CC-BY-4.0"), ".tar.bz2"),
]


@pytest.fixture
def channel(tmp_path: Path) -> Path:
    root = tmp_path / "channel"
    build_channel(root, SPECS)
    return root


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


def all_records(repodata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**repodata["packages"], **repodata["packages.conda"]}


def test_outputs_of_a_fresh_index(channel: Path) -> None:
    result = index_channel(channel)
    assert result.summary() == "indexed 9 packages in 3 subdirs: +9 ~0 -0, 0 skipped"

    for subdir in ("linux-64", "osx-arm64", "noarch"):
        folder = channel / subdir
        raw = (folder / "repodata.json").read_bytes()
        repodata = json.loads(raw)
        assert repodata["info"] == {"subdir": subdir}
        assert repodata["repodata_version"] == 1
        assert repodata["removed"] == []
        assert all(fn.endswith(".tar.bz2") for fn in repodata["packages"])
        assert all(fn.endswith(".conda") for fn in repodata["packages.conda"])
        # Every package file is listed, with the record taken from its index.json.
        files = sorted(p.name for p in folder.iterdir() if p.name.endswith((".conda", ".bz2")))
        records = all_records(repodata)
        assert sorted(records) == [f for f in files if f != "repodata.json.bz2"]
        for fn, record in records.items():
            md5, sha256, size = file_digests(folder / fn)
            assert (record["md5"], record["sha256"], record["size"]) == (md5, sha256, size)
            assert "arch" not in record and "platform" not in record
            assert record["subdir"] == subdir
            assert isinstance(record["indexed_timestamp"], int)
        # The compressed twin holds the same bytes; no .bz2 unless asked for.
        assert (
            zstandard.ZstdDecompressor().decompress(
                (folder / "repodata.json.zst").read_bytes(), max_output_size=len(raw)
            )
            == raw
        )
        assert not (folder / "repodata.json.bz2").exists()
        assert load(folder / "repodata_from_packages.json") == repodata  # no patches
        run_exports = load(folder / "run_exports.json")
        assert sorted({**run_exports["packages"], **run_exports["packages.conda"]}) == sorted(
            records
        )
        assert (folder / "index.html").is_file()
        assert (folder / "current_repodata.json").is_file()

    linux = load(channel / "linux-64" / "repodata.json")
    app = linux["packages.conda"]["app-3.1-0.conda"]
    assert app["depends"] == ["lib 2.*", "pyhelper"]
    assert app["track_features"] == "fancy"
    assert (
        load(channel / "noarch" / "repodata.json")["packages.conda"][
            "pyhelper-0.5-pyhd8ed1ab_0.conda"
        ]["features"]
        == "legacy"
    )

    run_exports = load(channel / "linux-64" / "run_exports.json")
    assert run_exports["packages.conda"]["base-1.0-0.conda"]["run_exports"] == {
        "weak": ["base >=1.0"]
    }
    assert run_exports["packages"]["base-1.9-1.tar.bz2"]["run_exports"] == {}

    # current_repodata: the newest base is 1.10 (not 1.9 by string order), plus the
    # 1.9 that lib needs; the .conda lib wins over its .tar.bz2 twin.
    current = all_records(load(channel / "linux-64" / "current_repodata.json"))
    assert sorted(current) == [
        "app-3.1-0.conda",
        "base-1.10-0.conda",
        "base-1.9-1.tar.bz2",
        "lib-2.0-0.conda",
    ]

    channeldata = load(channel / "channeldata.json")
    assert channeldata["channeldata_version"] == 1
    assert sorted(channeldata["packages"]) == ["app", "base", "data", "lib", "pyhelper"]
    assert channeldata["packages"]["base"]["version"] == "1.10"
    assert sorted(channeldata["packages"]["app"]["subdirs"]) == ["linux-64", "osx-arm64"]
    assert sorted(channeldata["subdirs"]) == ["linux-64", "noarch", "osx-arm64"]
    assert (channel / "index.html").is_file()
    # The state folder holds the cache; nothing else leaks into the channel.
    assert (channel / ".reconciler" / "cache" / "linux-64.msgpack").is_file()


def test_empty_channel_gets_noarch_repodata(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    result = index_channel(root, subdirs=["linux-64"])
    assert result.summary() == "indexed 0 packages in 2 subdirs: +0 ~0 -0, 0 skipped"
    for subdir in ("noarch", "linux-64"):
        repodata = load(root / subdir / "repodata.json")
        assert repodata["packages"] == {} and repodata["packages.conda"] == {}


def test_rattler_solves_from_file_url(channel: Path, tmp_path: Path) -> None:
    build_package(channel, PackageSpec("python", "3.12.0", subdir="linux-64"))
    index_channel(channel)
    solved = solve(channel.as_uri(), ["app"], "linux-64", tmp_path / "rattler-cache")
    assert solved == {
        "app": "app-3.1-0.conda",
        "lib": "lib-2.0-0.conda",
        "base": "base-1.9-1.tar.bz2",
        "pyhelper": "pyhelper-0.5-pyhd8ed1ab_0.conda",
        "python": "python-3.12.0-0.conda",
    }


@pytest.mark.slow
def test_rattler_solves_over_http(channel: Path, tmp_path: Path) -> None:
    # The fixture's noarch python package needs python; add one so the solve closes.
    build_package(channel, PackageSpec("python", "3.12.0", subdir="linux-64"))
    build_package(channel, PackageSpec("python", "3.12.0", subdir="osx-arm64"))
    index_channel(channel)
    with serve_directory(channel) as (url, requests):
        solved = solve(url, ["app", "data"], "linux-64", tmp_path / "cache")
        osx = solve(url, ["app"], "osx-arm64", tmp_path / "cache2")
    assert solved["app"] == "app-3.1-0.conda"
    assert solved["base"] == "base-1.9-1.tar.bz2"
    assert solved["data"] == "data-2024.1-0.tar.bz2"
    assert solved["python"] == "python-3.12.0-0.conda"
    assert osx["app"] == "app-3.1-1.conda"
    # The client took the compressed repodata, as conda, mamba and pixi do.
    assert "/linux-64/repodata.json.zst" in requests


def test_rattler_reads_our_shards_over_http(channel: Path, tmp_path: Path) -> None:
    build_package(channel, PackageSpec("python", "3.12.0", subdir="linux-64"))
    index_channel(channel, options=IndexOptions(shards=True))
    with serve_directory(channel) as (url, requests):
        solved = solve(url, ["app"], "linux-64", tmp_path / "cache", sharded=True)
    assert solved["lib"] == "lib-2.0-0.conda"
    assert "/linux-64/repodata_shards.msgpack.zst" in requests
    assert any(r.startswith("/linux-64/shards/") for r in requests)
    assert "/linux-64/repodata.json.zst" not in requests


# -- incremental behaviour ----------------------------------------------------------------


def output_mtimes(root: Path) -> dict[str, int]:
    """mtime of every file the indexer writes (everything but packages and its cache)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".reconciler"]
        for name in filenames:
            if not name.endswith((".conda", ".tar.bz2")):
                path = Path(dirpath) / name
                found[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return found


def test_noop_reindex_rewrites_nothing(channel: Path) -> None:
    options = IndexOptions(shards=True, bz2=True)
    index_channel(channel, options=options)
    before = output_mtimes(channel)
    assert "channeldata.json" in before and "linux-64/repodata.json.bz2" in before
    result = index_channel(channel, options=options)
    assert result.summary() == "indexed 9 packages in 3 subdirs: +0 ~0 -0, 0 skipped"
    assert output_mtimes(channel) == before
    # Also when the fast path is defeated (outputs' own cache gone): bytes are equal.
    for state in (channel / ".reconciler" / "cache").glob("*.outputs.json"):
        state.unlink()
    index_channel(channel, options=options)
    assert output_mtimes(channel) == before


def test_add_replace_delete(channel: Path) -> None:
    index_channel(channel)
    stamps = {
        fn: r["indexed_timestamp"]
        for fn, r in all_records(load(channel / "linux-64" / "repodata.json")).items()
    }
    build_package(channel, PackageSpec("newcomer", "1.0", subdir="linux-64"))
    replaced = build_package(
        channel, PackageSpec("base", "1.0", subdir="linux-64", depends=["extra"])
    )
    (channel / "linux-64" / "lib-2.0-0.tar.bz2").unlink()
    result = index_channel(channel)
    linux = next(r for r in result.subdirs if r.subdir == "linux-64")
    assert linux.added == ["newcomer-1.0-0.conda"]
    assert linux.updated == ["base-1.0-0.conda"]
    assert linux.removed == ["lib-2.0-0.tar.bz2"]
    assert result.summary() == "indexed 9 packages in 3 subdirs: +1 ~1 -1, 0 skipped"

    records = all_records(load(channel / "linux-64" / "repodata.json"))
    assert "lib-2.0-0.tar.bz2" not in records
    assert records["base-1.0-0.conda"]["depends"] == ["extra"]
    assert records["base-1.0-0.conda"]["sha256"] == file_digests(replaced)[1]
    # An untouched package keeps its CEP-47 indexed_timestamp.
    assert records["base-1.9-1.tar.bz2"]["indexed_timestamp"] == stamps["base-1.9-1.tar.bz2"]


def test_name_that_vanished_everywhere_leaves_channeldata(channel: Path) -> None:
    index_channel(channel)
    assert "data" in load(channel / "channeldata.json")["packages"]
    (channel / "noarch" / "data-2024.1-0.tar.bz2").unlink()
    index_channel(channel)
    assert "data" not in load(channel / "channeldata.json")["packages"]


def test_cache_deleted_or_corrupt_is_rebuilt(channel: Path) -> None:
    index_channel(channel)
    before = (channel / "linux-64" / "repodata.json").read_bytes()
    cache = channel / ".reconciler" / "cache"
    (cache / "linux-64.msgpack").write_bytes(b"\x00garbage")
    for path in cache.glob("*.outputs.json"):
        path.unlink()
    (cache / "noarch.msgpack").unlink()
    result = index_channel(channel)
    assert result.summary() == "indexed 9 packages in 3 subdirs: +0 ~0 -0, 0 skipped"
    # Same bytes: indexed_timestamp came back from repodata_from_packages.json.
    assert (channel / "linux-64" / "repodata.json").read_bytes() == before


def test_disabled_outputs_are_removed(channel: Path) -> None:
    index_channel(channel, options=IndexOptions(bz2=True, shards=True))
    assert (channel / "linux-64" / "repodata.json.bz2").exists()
    assert (channel / "linux-64" / "repodata_shards.msgpack.zst").exists()
    options = IndexOptions(
        zst=False,
        current_repodata=False,
        run_exports=False,
        channeldata=False,
        html=False,
        repodata_from_packages=False,
    )
    index_channel(channel, options=options)
    left = sorted(
        p.name
        for p in (channel / "linux-64").iterdir()
        if not p.name.endswith((".conda", ".tar.bz2"))
    )
    assert left == ["repodata.json"]
    assert not (channel / "channeldata.json").exists()
    assert not (channel / "index.html").exists()


# -- bad input ----------------------------------------------------------------------------


def make_bad_packages(root: Path) -> dict[str, str]:
    """One bad file of each kind; returns filename → expected reason fragment."""
    linux = root / "linux-64"
    linux.mkdir(parents=True, exist_ok=True)
    good = build_package(root, PackageSpec("cut", "1.0", subdir="linux-64"))
    good.write_bytes(good.read_bytes()[:200])
    (linux / "empty-1.0-0.tar.bz2").write_bytes(b"")
    (linux / "text-1.0-0.conda").write_text("not a package\n")
    wrong_subdir = build_package(root, PackageSpec("wrongsub", "1.0", subdir="osx-64"))
    wrong_subdir.rename(linux / wrong_subdir.name)
    mislabelled = build_package(root, PackageSpec("inner", "1.0", subdir="linux-64"))
    mislabelled.rename(linux / "outer-1.0-0.conda")
    return {
        "cut-1.0-0.conda": "not a valid .conda",
        "empty-1.0-0.tar.bz2": "empty file",
        "text-1.0-0.conda": "not a valid .conda",
        "wrongsub-1.0-0.conda": "subdir is 'osx-64'",
        "outer-1.0-0.conda": "inner names do not match",
    }


def test_bad_packages_are_skipped_and_reported(
    channel: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = make_bad_packages(channel)
    result = index_channel(channel)
    skipped = {s.filename: s.reason for s in result.skipped}
    assert sorted(skipped) == sorted(expected)
    for filename, fragment in expected.items():
        assert fragment in skipped[filename], (filename, skipped[filename])
        assert any(filename in message for message in caplog.messages)
    assert result.summary() == "indexed 9 packages in 4 subdirs: +9 ~0 -0, 5 skipped"
    # Everything good is still indexed.
    assert len(all_records(load(channel / "linux-64" / "repodata.json"))) == 6


def test_strict_makes_bad_packages_fatal(channel: Path) -> None:
    make_bad_packages(channel)
    with pytest.raises(IndexError_) as info:
        index_channel(channel, strict=True)
    assert "5 package(s) could not be indexed" in info.value.message
    assert "linux-64/empty-1.0-0.tar.bz2: empty file" in info.value.message
    assert not (channel / "linux-64" / "repodata.json").exists()


def test_index_json_identity_must_match_filename(tmp_path: Path) -> None:
    root = tmp_path / "c"
    path = build_package(root, PackageSpec("real", "1.0", subdir="linux-64"), ".tar.bz2")
    path.rename(path.with_name("fake-1.0-0.tar.bz2"))
    result = index_channel(root)
    assert [s.format() for s in result.skipped] == [
        "linux-64/fake-1.0-0.tar.bz2: index.json says real-1.0-0, but the filename says fake-1.0-0"
    ]


def test_not_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(IndexError_, match="is not a folder"):
        index_channel(target)


def test_leftovers_of_a_crashed_run_are_removed(channel: Path) -> None:
    # A download's temp name ends in its writer's pid: one above any pid_max, so dead.
    leftover = channel / "linux-64" / ".reconcile-tmp-repodata.json.4194305"
    leftover.write_text("{half")
    index_channel(channel)
    assert not leftover.exists()


def test_committed_example_upstream_is_up_to_date(tmp_path: Path) -> None:
    """Re-indexing the bundled demo channel reproduces its committed index byte for byte."""
    import shutil

    from tests.conftest import REPO_ROOT

    copy = tmp_path / "demo"
    shutil.copytree(
        REPO_ROOT / "examples" / "upstream" / "demo",
        copy,
        ignore=shutil.ignore_patterns(".reconciler"),  # a local run's cache is not committed
    )
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    result = index_channel(copy, channel_name="demo")
    assert result.summary() == "indexed 10 packages in 3 subdirs: +0 ~0 -0, 0 skipped"
    assert {p: p.read_bytes() for p in before} == before


def test_touched_package_and_deleted_output(channel: Path) -> None:
    index_channel(channel)
    before = output_mtimes(channel)
    package = channel / "linux-64" / "base-1.0-0.conda"
    os.utime(package, ns=(package.stat().st_atime_ns, package.stat().st_mtime_ns + 10**9))
    result = index_channel(channel)
    assert result.summary() == "indexed 9 packages in 3 subdirs: +0 ~0 -0, 0 skipped"
    assert output_mtimes(channel) == before  # same bytes: nothing rewritten

    (channel / "noarch" / "repodata.json.zst").unlink()
    result = index_channel(channel)
    noarch = next(r for r in result.subdirs if r.subdir == "noarch")
    assert noarch.written == ["repodata.json.zst"]
    assert (channel / "noarch" / "repodata.json.zst").exists()


def _published(channel: Path) -> dict[str, bytes]:
    """Every file a client can see, by path."""
    return {
        str(path.relative_to(channel)): path.read_bytes()
        for path in sorted(channel.rglob("*"))
        if path.is_file() and ".reconciler" not in path.parts
    }


def test_incremental_update_gives_the_bytes_of_a_full_index(
    channel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.kinds.conda import indexer

    index_channel(channel)
    # A new name, a newer version of a name in two subdirs, different bytes under an old
    # name, and the last file of a name gone.
    build_package(channel, PackageSpec("newcomer", "1.0", subdir="linux-64"))
    build_package(channel, PackageSpec("app", "3.2", subdir="osx-arm64", depends=["pyhelper"]))
    build_package(channel, PackageSpec("base", "1.0", subdir="linux-64", depends=["extra"]))
    (channel / "noarch" / "data-2024.1-0.tar.bz2").unlink()

    calls: list[str] = []
    merge, update = indexer.merge_summaries, indexer.update_channeldata
    monkeypatch.setattr(indexer, "merge_summaries", lambda *a: calls.append("full") or merge(*a))
    monkeypatch.setattr(
        indexer, "update_channeldata", lambda *a: calls.append("delta") or update(*a)
    )
    result = index_channel(channel)
    assert result.summary() == "indexed 10 packages in 3 subdirs: +2 ~1 -1, 0 skipped"
    assert calls == ["delta"]  # channeldata was updated from the changed subdirs' parts
    incremental = _published(channel)
    channeldata = json.loads(incremental["channeldata.json"])["packages"]
    assert "data" not in channeldata and channeldata["app"]["version"] == "3.2"

    # Everything again from the files alone (no cache, no saved summaries; the CEP-47
    # stamps come back from repodata_from_packages.json): the same bytes.
    calls.clear()
    for path in sorted((channel / ".reconciler").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    index_channel(channel)
    assert calls == ["full"]
    assert _published(channel) == incremental
