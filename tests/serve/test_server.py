"""`reconcile serve` end to end: a passive mirror, a real client, hostile requests."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler import cli
from reconciler.config.models import load_config
from reconciler.kinds.conda.indexer import index_channel
from reconciler.serve.server import ChannelServer
from tests.client import solve
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("python", "3.12.0", subdir="linux-64"))
    build_package(root, PackageSpec("lib", "1.0", subdir="linux-64", depends=["python"]))
    build_package(root, PackageSpec("app", "2.0", subdir="linux-64", depends=["lib >=1"]))
    build_package(root, PackageSpec("helper", "0.1", noarch="generic"), ".tar.bz2")
    index_channel(root)
    return root


@pytest.fixture
def setup(tmp_path: Path, upstream: Path) -> Iterator[dict[str, Any]]:
    """An applied config (passive mirror over HTTP + one local package), served on a port."""
    with faulty_server(upstream) as (upstream_url, upstream_state):
        config = tmp_path / "channels.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
            "    subdirs: [linux-64, noarch]\n    mirrors:\n"
            f"      - {{name: up, source: '{upstream_url}', mode: passive}}\n"
        )
        build_package(tmp_path / "chan", PackageSpec("mine", "1.0", subdir="linux-64"))
        assert cli.main(["apply", "-c", str(config)]) == 0
        server = ChannelServer(("127.0.0.1", 0), load_config(config))
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield {
                "url": server.url,
                "channel": tmp_path / "chan",
                "upstream": upstream,
                "upstream_state": upstream_state,
                "config": config,
            }
        finally:
            server.shutdown()
            server.server_close()


def package_requests(state: dict[str, Any]) -> list[str]:
    return [r for r in state["requests"] if r.endswith((".conda", ".tar.bz2"))]


def test_client_solves_and_downloads_through_the_server(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    url, channel = setup["url"], setup["channel"]
    assert not (channel / "linux-64" / "app-2.0-0.conda").exists()  # passive: not yet
    records = solve(f"{url}/chan", ["app"], "linux-64", tmp_path / "cache")
    assert records == {
        "app": "app-2.0-0.conda",
        "lib": "lib-1.0-0.conda",
        "python": "python-3.12.0-0.conda",
    }
    for filename in records.values():
        response = requests.get(f"{url}/chan/linux-64/{filename}", timeout=30)
        assert response.status_code == 200
        expected = (setup["upstream"] / "linux-64" / filename).read_bytes()
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(expected).digest()
        assert (channel / "linux-64" / filename).read_bytes() == expected  # stored, verified
    fetched = len(package_requests(setup["upstream_state"]))
    assert fetched == 3
    # A second fetch is served from disk: upstream is not asked again.
    assert requests.get(f"{url}/chan/linux-64/app-2.0-0.conda", timeout=30).status_code == 200
    assert len(package_requests(setup["upstream_state"])) == fetched
    stats = json.loads((channel / ".reconciler" / "passive.json").read_text())
    assert stats["fetches"] == 3 and stats["hits"] == 0  # hits count only waits on a fetch
    status = requests.get(f"{url}/api/status", timeout=30).json()
    assert status["channels"][0]["passive"]["fetches"] == 3


def test_concurrent_requests_share_one_download(setup: dict[str, Any]) -> None:
    url = setup["url"]
    results: list[int] = []

    def get() -> None:
        results.append(requests.get(f"{url}/chan/linux-64/lib-1.0-0.conda", timeout=30).status_code)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    assert package_requests(setup["upstream_state"]) == ["/linux-64/lib-1.0-0.conda"]


def test_corrupt_upstream_file_is_a_502_and_stores_nothing(setup: dict[str, Any]) -> None:
    url, channel = setup["url"], setup["channel"]
    bad = setup["upstream"] / "linux-64" / "app-2.0-0.conda"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, wrong sha256
    bad.write_bytes(bytes(data))
    response = requests.get(f"{url}/chan/linux-64/app-2.0-0.conda", timeout=30)
    assert response.status_code == 502
    assert "sha256 mismatch" in response.text
    assert not (channel / "linux-64" / "app-2.0-0.conda").exists()
    assert list(channel.rglob(".reconcile-tmp-*")) == []


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


@pytest.mark.parametrize(
    "path",
    [
        "/chan/../channels.yaml",
        "/chan/%2e%2e/channels.yaml",
        "/chan/linux-64/..%2f..%2fchannels.yaml",
        "/chan/linux-64/%2e%2e%2f%2e%2e%2fchannels.yaml",
        "/chan/.reconciler/state.json",
        "/chan/%2ereconciler/state.json",
        "/chan/linux-64/.reconcile-tmp-x",
        "/chan/.reconciler/upstream/up/linux-64/repodata.json.zst",
        "/chan/linux-64/../../channels.yaml",
        "/chan/linux-64/",  # no listing (the generated index.html is served instead below)
        "/nochannel/linux-64/repodata.json",
        "/chan/linux-64/not-listed-1.0-0.conda",
        "/chan/linux-64/mine-1.0-0.conda%00.json",
    ],
)
def test_nothing_outside_the_channel_index_is_served(setup: dict[str, Any], path: str) -> None:
    before = len(setup["upstream_state"]["requests"])
    response = raw_get(setup["url"], path)
    body = response.read()
    if path == "/chan/linux-64/":
        assert response.status == 200 and b"<!DOCTYPE html>" in body
    else:
        assert response.status == 404, (path, body[:200])
    assert len(setup["upstream_state"]["requests"]) == before  # never proxied


def test_symlink_out_of_the_channel_is_not_followed(setup: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (setup["channel"] / "linux-64" / "index.html").unlink()
    (setup["channel"] / "linux-64" / "index.html").symlink_to(secret)
    assert raw_get(setup["url"], "/chan/linux-64/index.html").status == 404


def test_http_semantics(setup: dict[str, Any]) -> None:
    url = setup["url"]
    repodata = requests.get(f"{url}/chan/linux-64/repodata.json", timeout=30)
    assert repodata.status_code == 200
    assert repodata.headers["Content-Type"] == "application/json"
    assert repodata.headers["Cache-Control"] == "public, max-age=60"
    etag, modified = repodata.headers["ETag"], repodata.headers["Last-Modified"]
    assert (
        requests.get(
            f"{url}/chan/linux-64/repodata.json", headers={"If-None-Match": etag}, timeout=30
        ).status_code
        == 304
    )
    assert (
        requests.get(
            f"{url}/chan/linux-64/repodata.json",
            headers={"If-Modified-Since": modified},
            timeout=30,
        ).status_code
        == 304
    )
    assert requests.get(f"{url}/chan/channeldata.json", timeout=30).status_code == 200
    assert (
        requests.get(f"{url}/chan/linux-64/repodata.json.zst", timeout=30).headers["Content-Type"]
        == "application/zstd"
    )

    package = f"{url}/chan/linux-64/mine-1.0-0.conda"
    full = requests.get(package, timeout=30)
    assert full.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert full.headers["Accept-Ranges"] == "bytes"
    part = requests.get(package, headers={"Range": "bytes=10-19"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(full.content)}"
    tail = requests.get(package, headers={"Range": "bytes=-5"}, timeout=30)
    assert tail.content == full.content[-5:]
    assert requests.get(package, headers={"Range": "bytes=999999-"}, timeout=30).status_code == 416
    head = requests.head(package, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(full.content))


def test_status_page_and_api(setup: dict[str, Any]) -> None:
    page = requests.get(setup["url"] + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert '<section class="channel" id="channel-chan">' in page.text
    assert "<td>up</td><td>passive</td><td>every apply</td>" in page.text
    assert '<td class="completed">completed</td>' in page.text
    assert '<svg class="timeline"' in page.text
    # Nothing fetched from elsewhere: it must work on an air-gapped network.
    assert "<script" not in page.text and 'src="' not in page.text
    assert 'href="http' not in page.text
    api = requests.get(setup["url"] + "/api/status", timeout=30).json()
    channel = api["channels"][0]
    assert channel["packages"] == {"linux-64": 4, "noarch": 1}
    assert channel["mirrors"][0]["last_run"]["state"] == "completed"
    assert [r["state"] for r in channel["history"]] == ["completed", "completed"]


@pytest.mark.slow
def test_sigterm_stops_cleanly(setup: dict[str, Any]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "-c", str(setup["config"]), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "serving 1 channel(s) on http://127.0.0.1:" in line
    port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
    assert (
        requests.get(f"http://127.0.0.1:{port}/chan/noarch/repodata.json", timeout=30).status_code
        == 200
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert list(setup["channel"].rglob(".reconcile-tmp-*")) == []


def test_idle_keep_alive_connection_does_not_block_shutdown(tmp_path: Path, upstream: Path) -> None:
    import time

    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nchannels:\n  - {{name: up, path: '{upstream}'}}\n")
    server = ChannelServer(("127.0.0.1", 0), load_config(config))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    response = raw_get(server.url, "/up/noarch/repodata.json")
    assert response.status == 200
    response.read()  # the connection stays open, idle, waiting for a next request
    started = time.monotonic()
    server.shutdown()
    server.server_close()
    assert time.monotonic() - started < 5
