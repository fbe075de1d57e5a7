"""A conda mirror's upstream against a real local HTTP server that misbehaves on request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler.config.models import Mirror
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.conda.select import NameGate
from reconciler.kinds.conda.upstream import CondaUpstream, read_snapshot, write_snapshot
from reconciler.store.local import LocalStore
from reconciler.transport.http import NotFound, Upstream, UpstreamError, redact
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.window_spy import spy_window_scans


@pytest.fixture
def upstream_dir(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("a", "1.0", subdir="linux-64"))
    build_package(root, PackageSpec("b", "2.0", noarch="generic"), ".tar.bz2")
    index_channel(root)
    return root


def client(source: str, tmp_path: Path, retries: int = 3) -> CondaUpstream:
    mirror = Mirror(name="m", source=source, timeout=5, retries=retries)
    return CondaUpstream(mirror, None, tmp_path / "cache", backoff=0.01)


def test_zst_first_then_304_reuses_cache(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        up = client(url, tmp_path)
        first = up.fetch("linux-64", None)
        assert "a-1.0-0.conda" in first.repodata["packages.conda"]
        assert not first.not_modified and first.name == "repodata.json.zst"
        second = up.fetch("linux-64", None)
        assert second.not_modified and second.repodata == first.repodata
        assert second.sha256 == first.sha256
    assert state["requests"].count("/linux-64/repodata.json.zst") == 2
    assert state["not_modified"] == ["/linux-64/repodata.json.zst"]
    assert "/linux-64/repodata.json" not in state["requests"]


def test_a_fresh_cache_asks_with_the_channels_kept_copy(upstream_dir: Path, tmp_path: Path) -> None:
    """A fresh CI runner: no HTTP cache, but the channel keeps what its last apply used."""
    channel = LocalStore(tmp_path / "channel")
    with faulty_server(upstream_dir) as (url, state):
        first = client(url, tmp_path / "one").fetch("linux-64", None)
        write_snapshot(channel, "m", first)
        kept = read_snapshot(channel, "m", "linux-64")
        assert kept is not None and kept.sha256 == first.sha256
        again = client(url, tmp_path / "two").fetch("linux-64", kept)
        assert again.not_modified and again.repodata == first.repodata
    assert state["not_modified"] == ["/linux-64/repodata.json.zst"]


def test_a_damaged_snapshot_is_as_if_none_was_kept(upstream_dir: Path, tmp_path: Path) -> None:
    channel = LocalStore(tmp_path / "channel")
    with faulty_server(upstream_dir) as (url, _):
        write_snapshot(channel, "m", client(url, tmp_path).fetch("noarch", None))
    body = next((tmp_path / "channel").rglob("repodata.json.zst"))
    body.write_bytes(body.read_bytes()[:-3])
    assert read_snapshot(channel, "m", "noarch") is None


def test_falls_back_to_json_and_retries_5xx(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/noarch/repodata.json.zst"] = ["404"]
        state["faults"]["/noarch/repodata.json"] = ["500", "500"]
        fetched = client(url, tmp_path).fetch("noarch", None)
    assert "b-2.0-0.tar.bz2" in fetched.repodata["packages"]
    assert state["requests"].count("/noarch/repodata.json") == 3


def test_gives_up_naming_the_url(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/noarch/repodata.json.zst"] = ["500"] * 10
        with pytest.raises(UpstreamError) as info:
            client(url, tmp_path, retries=2).fetch("noarch", None)
    assert (
        f"{url}/noarch/repodata.json.zst: HTTP 500 (gave up after 3 attempts)" in info.value.message
    )


def test_garbage_and_missing_subdir(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/linux-64/repodata.json.zst"] = ["garbage"]
        with pytest.raises(UpstreamError, match="not valid zstd data"):
            client(url, tmp_path).fetch("linux-64", None)
        with pytest.raises(NotFound):
            client(url, tmp_path).fetch("win-64", None)


def test_download_verifies_and_retries_a_dropped_connection(
    upstream_dir: Path, tmp_path: Path
) -> None:
    package = upstream_dir / "linux-64" / "a-1.0-0.conda"
    data = package.read_bytes()
    store = LocalStore(tmp_path / "out")
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/linux-64/a-1.0-0.conda"] = ["drop"]
        fetch = client(url, tmp_path).fetcher(
            "linux-64", package.name, len(data), hashlib.sha256(data).hexdigest()
        )
        writer = store.writer("linux-64/a-1.0-0.conda")
        written = fetch(writer.handle)
        writer.commit()
    target = tmp_path / "out" / "linux-64" / "a-1.0-0.conda"
    assert written == len(data) and target.read_bytes() == data
    assert state["requests"].count("/linux-64/a-1.0-0.conda") == 2
    assert list(target.parent.iterdir()) == [target]  # no temporary file left


def test_wrong_sha256_keeps_the_old_file(upstream_dir: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    store.write("linux-64/a-1.0-0.conda", b"old")
    with faulty_server(upstream_dir) as (url, _):
        fetch = client(url, tmp_path).fetcher("linux-64", "a-1.0-0.conda", None, "0" * 64)
        writer = store.writer("linux-64/a-1.0-0.conda")
        with pytest.raises(UpstreamError, match="sha256 mismatch"):
            fetch(writer.handle)
        writer.abort()
    folder = tmp_path / "out" / "linux-64"
    assert (folder / "a-1.0-0.conda").read_bytes() == b"old"
    assert list(folder.glob(".reconcile-tmp-*")) == []


def test_local_path_and_file_url(upstream_dir: Path, tmp_path: Path) -> None:
    for source in (str(upstream_dir), upstream_dir.as_uri()):
        fetched = client(source, tmp_path).fetch("linux-64", None)
        assert "a-1.0-0.conda" in fetched.repodata["packages.conda"]


def test_token_goes_into_the_url_but_never_into_messages(tmp_path: Path) -> None:
    up = Upstream("https://conda.example.org/chan", tmp_path / "state", token="s3cret")
    assert up.url("noarch", "x.conda") == "https://conda.example.org/t/s3cret/chan/noarch/x.conda"
    assert "s3cret" not in up.shown("noarch", "x.conda")
    assert redact("https://h/t/abc/c/noarch") == "https://h/t/***/c/noarch"
    assert redact("https://user:pw@h/c") == "https://***@h/c"


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_fetch(
    upstream_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with faulty_server(upstream_dir) as (url, state):
        up = client(url, tmp_path)
        assert up.http.cache_dir is not None
        up.http.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        up.http.cache_dir.parent.joinpath(up.http.cache_dir.name).write_text("a file, not a folder")
        first = up.fetch("linux-64", None)
        assert "a-1.0-0.conda" in first.repodata["packages.conda"]
        assert first.sha256 == hashlib.sha256(first.body).hexdigest()
        assert "not caching" in caplog.text
        again = up.fetch("linux-64", None)  # nothing kept: asked in full again
        assert not again.not_modified and again.sha256 == first.sha256
    assert state["not_modified"] == []


def test_a_name_gate_reads_the_zst_body_through_a_window(
    upstream_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned = spy_window_scans(monkeypatch)
    gate = NameGate(((frozenset({"a"}), ()),))
    with faulty_server(upstream_dir) as (url, _state):
        windowed = client(url, tmp_path / "one").fetch("linux-64", None, gate)
        whole = client(url, tmp_path / "two").fetch("linux-64", None)
    # The gated fetch only, and the document was taken.
    assert [found is not None for found in scanned] == [True]
    for section in (0, 1):
        assert list(windowed.sparse.names(section)) == list(whole.sparse.names(section))
        for filename in whole.sparse.names(section):
            assert windowed.sparse.record(section, filename) == whole.sparse.record(
                section, filename
            )
    assert windowed.repodata == whole.repodata


def test_a_kept_copy_read_later_keeps_only_the_expected_names(
    upstream_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel's snapshot (no network) is read when first used: through the window
    when the names whose records will be asked for are known by then."""
    channel = LocalStore(tmp_path / "channel")
    with faulty_server(upstream_dir) as (url, _state):
        fetched = client(url, tmp_path).fetch("linux-64", None)
    write_snapshot(channel, "m", fetched)
    kept = read_snapshot(channel, "m", "linux-64")
    assert kept is not None and not kept.parsed.ready
    scanned = spy_window_scans(monkeypatch)
    kept.parsed.expect(NameGate(((frozenset({"a"}), ()),)))
    sparse = kept.sparse
    (only,) = scanned
    assert list(only.sections[1].kept) == ["a-1.0-0.conda"]
    assert sparse.record(1, "a-1.0-0.conda") == fetched.sparse.record(1, "a-1.0-0.conda")
    # Too late once read: the document stays as it was read.
    kept.parsed.expect(None)
    assert kept.sparse is sparse
