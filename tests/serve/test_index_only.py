"""No way around the published index: unlisted files, re-uploaded passive files,
symlinks and control characters in PyPI routes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler import cli
from reconciler.engine.layout import PASSIVE_VERIFIED as VERIFIED_NAME
from reconciler.kinds.conda.indexer import index_channel
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.pypi.dists import build_wheel
from tests.pypi.index_server import Offered, simple_index
from tests.serve.helpers import raw_exchange, raw_get, running


@pytest.fixture
def passive(tmp_path: Path) -> Iterator[dict[str, Any]]:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("app", "2.0", subdir="linux-64"))
    build_package(upstream, PackageSpec("gpl", "1.0", subdir="linux-64", license="GPL-3.0",
                                        license_family="GPL"))  # fmt: skip
    index_channel(upstream)
    with faulty_server(upstream) as (url, state):
        config = tmp_path / "channels.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
            "    subdirs: [linux-64, noarch]\n"
            "    filters: {exclude: [{license: GPL}]}\n    mirrors:\n"
            f"      - {{name: up, source: '{url}', mode: passive, retries: 0, timeout: 10}}\n"
        )
        build_package(tmp_path / "chan", PackageSpec("mine", "1.0", subdir="linux-64"))
        assert cli.main(["apply", "-c", str(config)]) == 0
        yield {"config": config, "upstream": upstream, "state": state, "chan": tmp_path / "chan"}


def test_files_on_disk_that_the_index_does_not_list_are_404(passive: dict[str, Any]) -> None:
    chan, upstream = passive["chan"], passive["upstream"]
    repodata = json.loads((chan / "linux-64" / "repodata.json").read_text())
    assert "gpl-1.0-0.conda" not in repodata["packages.conda"]  # left out by the licence filter
    # Someone copies the excluded file in by hand, and drops a stray file next to it.
    shutil.copy(upstream / "linux-64" / "gpl-1.0-0.conda", chan / "linux-64")
    (chan / "linux-64" / "notes.txt").write_text("not for clients")
    (chan / "linux-64" / "patch_instructions.json").write_text("{}")
    with running(passive["config"]) as server:
        for path in (
            "/chan/linux-64/gpl-1.0-0.conda",
            "/chan/linux-64/notes.txt",
            "/chan/linux-64/patch_instructions.json",
        ):
            response, _ = raw_get(server.url, path)
            assert response.status == 404, path
        assert raw_get(server.url, "/chan/linux-64/mine-1.0-0.conda")[0].status == 200
        # A publish that lists a new file is seen at once: the cache is keyed on the index.
        data = json.loads((chan / "linux-64" / "repodata.json").read_text())
        data["packages.conda"]["gpl-1.0-0.conda"] = dict(data["packages.conda"]["mine-1.0-0.conda"])
        (chan / "linux-64" / "repodata.json").write_text(json.dumps(data))
        assert raw_get(server.url, "/chan/linux-64/gpl-1.0-0.conda")[0].status == 200
    assert [r for r in passive["state"]["requests"] if "gpl" in r] == []  # never proxied


def test_a_reuploaded_passive_file_is_fetched_again_not_served_stale(
    passive: dict[str, Any],
) -> None:
    chan, upstream, config = passive["chan"], passive["upstream"], passive["config"]
    wanted = "/chan/linux-64/app-2.0-0.conda"
    with running(config) as server:
        first = requests.get(server.url + wanted, timeout=30)
        assert first.status_code == 200
    sidecar = json.loads((chan / VERIFIED_NAME).read_text())
    assert sidecar["linux-64/app-2.0-0.conda"][2] == hashlib.sha256(first.content).hexdigest()

    # The upstream re-uploads the file under the same name; the next apply records it.
    build_package(upstream, PackageSpec("app", "2.0", subdir="linux-64", files={"new": b"v2"}))
    index_channel(upstream)
    new = (upstream / "linux-64" / "app-2.0-0.conda").read_bytes()
    assert hashlib.sha256(new).digest() != hashlib.sha256(first.content).digest()
    assert cli.main(["apply", "-c", str(config), "--run-now"]) == 0
    state = json.loads((chan / ".reconciler" / "state.json").read_text())
    assert state["files"]["linux-64/app-2.0-0.conda"]["sha256"] == hashlib.sha256(new).hexdigest()
    stale = chan / "linux-64" / "app-2.0-0.conda"
    if not stale.exists():  # apply removed the old bytes itself: put them back as a crash would
        stale.write_bytes(first.content)
    before = len(passive["state"]["requests"])
    with running(config) as server:
        again = requests.get(server.url + wanted, timeout=30)
        assert again.status_code == 200
        assert hashlib.sha256(again.content).digest() == hashlib.sha256(new).digest()
        assert len(passive["state"]["requests"]) == before + 1  # fetched once more
        # Current now: later requests cost a stat, not a fetch.
        assert requests.get(server.url + wanted, timeout=30).content == new
        assert len(passive["state"]["requests"]) == before + 1


def test_a_passive_file_with_no_record_is_hashed_once(passive: dict[str, Any]) -> None:
    """A passive file already on disk (an older server, a mode switch) is checked once."""
    chan, upstream = passive["chan"], passive["upstream"]
    good = upstream / "linux-64" / "app-2.0-0.conda"
    shutil.copy(good, chan / "linux-64")
    with running(passive["config"]) as server:
        assert requests.get(server.url + "/chan/linux-64/app-2.0-0.conda", timeout=30).ok
    assert [r for r in passive["state"]["requests"] if r.endswith(".conda")] == []
    assert "linux-64/app-2.0-0.conda" in json.loads((chan / VERIFIED_NAME).read_text())
    # Bytes that do not match the record are replaced by a fetch.
    (chan / "linux-64" / "app-2.0-0.conda").write_bytes(b"tampered")
    (chan / VERIFIED_NAME).unlink()
    with running(passive["config"]) as server:
        response = requests.get(server.url + "/chan/linux-64/app-2.0-0.conda", timeout=30)
    assert response.content == good.read_bytes()


# -- PyPI -------------------------------------------------------------------------------


@pytest.fixture
def pypi(tmp_path: Path) -> Iterator[dict[str, Any]]:
    wheel = build_wheel(tmp_path / "dists", "tiny", "1.0")
    with simple_index([Offered(wheel, "tiny")]) as upstream:
        config = tmp_path / "channels.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: py\n    kind: pypi\n    path: ./py\n"
            f"    mirrors:\n      - {{name: up, source: '{upstream.url}', retries: 0, "
            "timeout: 10, projects: [tiny]}\n"
        )
        assert cli.main(["apply", "-c", str(config)]) == 0
        yield {"config": config, "py": tmp_path / "py", "tmp": tmp_path, "wheel": wheel}


def test_pypi_symlinks_out_of_the_channel_are_not_followed(pypi: dict[str, Any]) -> None:
    py, tmp = pypi["py"], pypi["tmp"]
    wheel = "tiny-1.0-py3-none-any.whl"
    with running(pypi["config"]) as server:
        assert raw_get(server.url, f"/py/packages/tiny/{wheel}")[0].status == 200
        # The project folder becomes a symlink to a folder outside the channel.
        outside = tmp / "outside"
        shutil.move(py / "packages" / "tiny", outside)
        (py / "packages" / "tiny").symlink_to(outside, target_is_directory=True)
        assert raw_get(server.url, f"/py/packages/tiny/{wheel}")[0].status == 404
        pages = tmp / "outside-pages"
        shutil.move(py / "simple" / "tiny", pages)
        (py / "simple" / "tiny").symlink_to(pages, target_is_directory=True)
        assert raw_get(server.url, "/py/simple/tiny/")[0].status == 404


def test_pypi_files_the_project_page_does_not_list_are_404(pypi: dict[str, Any]) -> None:
    stray = pypi["py"] / "packages" / "tiny" / "tiny-9.9-py3-none-any.whl"
    shutil.copy(pypi["wheel"], stray)
    with running(pypi["config"]) as server:
        assert raw_get(server.url, "/py/packages/tiny/tiny-9.9-py3-none-any.whl")[0].status == 404
        ok = raw_get(server.url, "/py/packages/tiny/tiny-1.0-py3-none-any.whl.metadata")[0]
        assert ok.status == 200  # listed through the page's core-metadata


@pytest.mark.parametrize(
    "path",
    [
        "/py/simple/tiny%0d%0aSet-Cookie:%20x=1/",
        "/py/simple/Tiny%0D%0ASet-Cookie:%20x=1/",
        "/py/simple/tiny%0aX:1",
        "/py/simple/a%20b/",
        "/py/simple/tiny%09/",
        "/py/packages/tiny%0d%0a/tiny-1.0-py3-none-any.whl",
    ],
)
def test_control_characters_in_project_names_are_404(pypi: dict[str, Any], path: str) -> None:
    with running(pypi["config"]) as server:
        reply = raw_exchange(server.url, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 0.5)
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 404"), reply[:300]
    assert b"Set-Cookie" not in head and b"\r\nX:" not in head and b"Location" not in head
