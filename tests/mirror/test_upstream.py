"""The upstream client against a real local HTTP server that misbehaves on request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler.kinds.conda.indexer import index_channel
from reconciler.transport.http import NotFound, Upstream, UpstreamError, redact
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package


@pytest.fixture
def upstream_dir(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("a", "1.0", subdir="linux-64"))
    build_package(root, PackageSpec("b", "2.0", noarch="generic"), ".tar.bz2")
    index_channel(root)
    return root


def client(url: str, tmp_path: Path, **kw: object) -> Upstream:
    return Upstream(url, tmp_path / "state", backoff=0.01, timeout=5, **kw)  # type: ignore[arg-type]


def test_zst_first_then_304_reuses_cache(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        up = client(url, tmp_path)
        first = up.fetch_repodata("linux-64")
        assert "a-1.0-0.conda" in first.repodata["packages.conda"]
        assert not first.not_modified
        second = up.fetch_repodata("linux-64")
        assert second.not_modified and second.repodata == first.repodata
    assert state["requests"].count("/linux-64/repodata.json.zst") == 2
    assert state["not_modified"] == ["/linux-64/repodata.json.zst"]
    assert "/linux-64/repodata.json" not in state["requests"]


def test_falls_back_to_json_and_retries_5xx(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/noarch/repodata.json.zst"] = ["404"]
        state["faults"]["/noarch/repodata.json"] = ["500", "500"]
        fetched = client(url, tmp_path).fetch_repodata("noarch")
    assert "b-2.0-0.tar.bz2" in fetched.repodata["packages"]
    assert state["requests"].count("/noarch/repodata.json") == 3


def test_gives_up_naming_the_url(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/noarch/repodata.json.zst"] = ["500"] * 10
        with pytest.raises(UpstreamError) as info:
            client(url, tmp_path, retries=2).fetch_repodata("noarch")
    assert (
        f"{url}/noarch/repodata.json.zst: HTTP 500 (gave up after 3 attempts)" in info.value.message
    )


def test_garbage_and_missing_subdir(upstream_dir: Path, tmp_path: Path) -> None:
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/linux-64/repodata.json.zst"] = ["garbage"]
        with pytest.raises(UpstreamError, match="not valid zstd data"):
            client(url, tmp_path).fetch_repodata("linux-64")
        with pytest.raises(NotFound):
            client(url, tmp_path).fetch_repodata("win-64")


def test_download_verifies_and_retries_a_dropped_connection(
    upstream_dir: Path, tmp_path: Path
) -> None:
    package = upstream_dir / "linux-64" / "a-1.0-0.conda"
    data = package.read_bytes()
    target = tmp_path / "out" / "a-1.0-0.conda"
    target.parent.mkdir()
    with faulty_server(upstream_dir) as (url, state):
        state["faults"]["/linux-64/a-1.0-0.conda"] = ["drop"]
        up = client(url, tmp_path)
        written = up.download(
            "linux-64", package.name, target, len(data), hashlib.sha256(data).hexdigest()
        )
    assert written == len(data) and target.read_bytes() == data
    assert state["requests"].count("/linux-64/a-1.0-0.conda") == 2
    assert list(target.parent.iterdir()) == [target]  # no temporary file left


def test_wrong_sha256_keeps_the_old_file(upstream_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-1.0-0.conda"
    target.write_bytes(b"old")
    with (
        faulty_server(upstream_dir) as (url, _),
        pytest.raises(UpstreamError, match="sha256 mismatch"),
    ):
        client(url, tmp_path).download("linux-64", "a-1.0-0.conda", target, None, "0" * 64)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.glob(".reconcile-tmp-*")) == []


def test_local_path_and_file_url(upstream_dir: Path, tmp_path: Path) -> None:
    for source in (str(upstream_dir), upstream_dir.as_uri()):
        fetched = client(source, tmp_path).fetch_repodata("linux-64")
        assert "a-1.0-0.conda" in fetched.repodata["packages.conda"]


def test_token_goes_into_the_url_but_never_into_messages(tmp_path: Path) -> None:
    up = client("https://conda.example.org/chan", tmp_path, token="s3cret")
    assert up.url("noarch", "x.conda") == "https://conda.example.org/t/s3cret/chan/noarch/x.conda"
    assert "s3cret" not in up.shown("noarch", "x.conda")
    assert redact("https://h/t/abc/c/noarch") == "https://h/t/***/c/noarch"
    assert redact("https://user:pw@h/c") == "https://***@h/c"
