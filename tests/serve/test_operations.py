"""Running it for real: metrics, the negative cache, reloads on SIGHUP and on change,
the access log, hostile connections, and the TLS warning."""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler import cli
from reconciler.kinds.conda.indexer import index_channel
from reconciler.serve.server import ServeOptions, tls_warning
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.serve.helpers import ServeProcess, raw_exchange, running


def _write_config(config: Path, url: str, channel: str = "chan", extra: str = "") -> None:
    config.write_text(
        f"version: 1\n{extra}channels:\n  - name: {channel}\n    path: ./chan\n"
        "    subdirs: [linux-64, noarch]\n    mirrors:\n"
        f"      - {{name: up, source: '{url}', mode: passive, retries: 0, timeout: 10}}\n"
    )


@pytest.fixture
def passive(tmp_path: Path) -> Iterator[dict[str, Any]]:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("app", "2.0", subdir="linux-64"))
    build_package(upstream, PackageSpec("lib", "1.0", subdir="linux-64"))
    index_channel(upstream)
    with faulty_server(upstream) as (url, state):
        config = tmp_path / "channels.yaml"
        _write_config(config, url)
        big = PackageSpec(
            "big", "1.0", subdir="linux-64", files={"data.bin": random.Random(1).randbytes(8 << 20)}
        )
        build_package(tmp_path / "chan", big)
        assert cli.main(["apply", "-c", str(config)]) == 0
        yield {"config": config, "url": url, "state": state, "chan": tmp_path / "chan",
               "tmp": tmp_path, "upstream": upstream}  # fmt: skip


def _upstream_asks(state: dict[str, Any], name: str) -> int:
    return sum(1 for r in state["requests"] if r.endswith(name))


def test_a_failed_fetch_is_remembered_and_listed(passive: dict[str, Any]) -> None:
    state = passive["state"]
    path = "/linux-64/app-2.0-0.conda"
    state["faults"][path] = ["500"] * 10
    with running(passive["config"]) as server:
        first = requests.get(f"{server.url}/chan{path}", timeout=30)
        assert first.status_code == 502 and "Retry-After" not in first.headers
        asked = _upstream_asks(state, "app-2.0-0.conda")
        assert asked == 1
        for _ in range(5):  # a client retrying in a loop
            again = requests.get(f"{server.url}/chan{path}", timeout=30)
            assert again.status_code == 502
            assert 1 <= int(again.headers["Retry-After"]) <= 60
            assert "not asked again for" in again.text
        assert _upstream_asks(state, "app-2.0-0.conda") == asked  # not amplified
        api = requests.get(f"{server.url}/api/status", timeout=30).json()
        failures = api["channels"][0]["passive"]["recent_failures"]
        assert failures[0]["file"] == "linux-64/app-2.0-0.conda"
        assert "HTTP 500" in failures[0]["error"] and failures[0]["time"]
        page = requests.get(f"{server.url}/", timeout=30).text
        assert '<table class="passive-failures">' in page and "linux-64/app-2.0-0.conda" in page
        metrics = requests.get(f"{server.url}/metrics", timeout=30).text
        assert 'reconcile_serve_passive_failures_total{channel="chan"} 1.0' in metrics
        assert 'reconcile_serve_passive_negative_cache_hits_total{channel="chan"} 5.0' in metrics
    # With the cache off, every request asks (and the fault queue lets the third through).
    state["faults"][path] = ["500"]
    with running(passive["config"], ServeOptions(failed_fetch_ttl=0)) as server:
        assert requests.get(f"{server.url}/chan{path}", timeout=30).status_code == 502
        assert requests.get(f"{server.url}/chan{path}", timeout=30).status_code == 200


def test_metrics(passive: dict[str, Any]) -> None:
    with running(passive["config"]) as server:
        url = server.url
        assert requests.get(f"{url}/chan/linux-64/app-2.0-0.conda", timeout=30).ok
        assert requests.get(f"{url}/chan/linux-64/repodata.json", timeout=30).ok
        assert requests.get(f"{url}/chan/linux-64/nothing-1-0.conda", timeout=30).status_code == 404
        assert requests.get(f"{url}/nochannel/x", timeout=30).status_code == 404
        requests.get(f"{url}/", timeout=30)
        response = requests.get(f"{url}/metrics", timeout=30)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in (
        'reconcile_serve_requests_total{channel="chan",code="200",kind="conda"} 2.0',
        'reconcile_serve_requests_total{channel="chan",code="404",kind="conda"} 1.0',
        'reconcile_serve_requests_total{channel="",code="404",kind="other"} 1.0',
        'reconcile_serve_requests_total{channel="",code="200",kind="status"} 1.0',
        'reconcile_serve_passive_fetches_total{channel="chan"} 1.0',
        'reconcile_serve_upstream_fetch_seconds_count{channel="chan"} 1.0',
        'reconcile_mirror_last_run_state{channel="chan",mirror="up",state="completed"} 1.0',
        'reconcile_mirror_last_run_state{channel="chan",mirror="up",state="failed"} 0.0',
        'reconcile_mirror_packages{channel="chan",mirror="up"} 2.0',
        'reconcile_channel_packages{channel="chan",subdir="linux-64"} 3.0',
        'reconcile_channel_info{access="public",channel="chan",kind="conda"} 1.0',
    ):
        assert line in text, line
    sent = re.search(
        r'reconcile_serve_response_bytes_total\{channel="chan",kind="conda"\} (\S+)', text
    )
    assert sent and float(sent.group(1)) > 1000
    stamp = re.search(
        r'reconcile_mirror_last_success_timestamp_seconds\{channel="chan",mirror="up"\} (\S+)', text
    )
    assert stamp and float(stamp.group(1)) > 1.6e9


def test_a_get_with_a_body_is_never_read_as_a_second_request(passive: dict[str, Any]) -> None:
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with running(passive["config"]) as server:
        with_length = (
            b"GET /chan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
        )
        chunk = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
        chunked = (
            b"GET /chan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk
        )
        for request in (with_length, chunked):
            reply = raw_exchange(server.url, request, wait=1.0)
            assert reply.count(b"HTTP/1.1 ") == 1, reply[:500]
            assert reply.startswith(b"HTTP/1.1 200") and b"reconcile_serve" not in reply


def test_a_client_leaving_mid_response_is_not_an_error(
    passive: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(passive["config"]) as server:
        host, port = server.url.removeprefix("http://").split(":")
        for _ in range(3):
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /chan/linux-64/big-1.0-0.conda HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # reset, with most of the 8 MB unsent
        response = requests.get(f"{server.url}/chan/linux-64/repodata.json", timeout=30)
        assert response.status_code == 200
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if r.exc_info]
    assert "499" in "\n".join(server.access_log) or "200" in "\n".join(server.access_log)


def test_tls_warning() -> None:
    assert tls_warning("127.0.0.1", ["internal"], False) is None
    assert tls_warning("::1", ["internal"], False) is None
    assert tls_warning("localhost", ["internal"], False) is None
    assert tls_warning("0.0.0.0", [], False) is None
    assert tls_warning("0.0.0.0", ["internal"], True) is None
    warning = tls_warning("0.0.0.0", ["internal"], False)
    assert warning and "docs/serve.md" in warning and "--behind-proxy" in warning


@pytest.mark.slow
def test_sighup_reloads_the_configuration(passive: dict[str, Any]) -> None:
    tmp, config, state = passive["tmp"], passive["config"], passive["state"]
    server = ServeProcess(config, "--access-log", "-", cwd=tmp)
    try:
        url = server.url
        assert requests.get(f"{url}/chan/noarch/repodata.json", timeout=30).status_code == 200
        # Rename the channel and point its mirror at a second upstream.
        with faulty_server(passive["upstream"]) as (second, second_state):
            _write_config(config, second, channel="renamed")
            server.process.send_signal(signal.SIGHUP)
            server.wait_for("reloaded")
            assert requests.get(f"{url}/chan/noarch/repodata.json", timeout=30).status_code == 404
            got = requests.get(f"{url}/renamed/linux-64/lib-1.0-0.conda", timeout=30)
            assert got.status_code == 200
            assert _upstream_asks(second_state, "lib-1.0-0.conda") == 1  # the new source
            assert _upstream_asks(state, "lib-1.0-0.conda") == 0

            # An invalid file is refused: the previous configuration stays.
            config.write_text(config.read_text().replace("mode: passive", "mode: sometimes"))
            server.process.send_signal(signal.SIGHUP)
            text = server.wait_for("not reloaded")
            assert "mode" in text.split("not reloaded", 1)[1]
            assert requests.get(f"{url}/renamed/noarch/repodata.json", timeout=30).ok
        server.wait_for('"GET /renamed/noarch/repodata.json HTTP/1.1" 200')  # access log on -
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_watch_config_reloads_on_change(passive: dict[str, Any]) -> None:
    tmp, config = passive["tmp"], passive["config"]
    server = ServeProcess(config, "--watch-config", cwd=tmp)
    try:
        assert requests.get(f"{server.url}/chan/noarch/repodata.json", timeout=30).ok
        _write_config(config, passive["url"], channel="moved")
        server.wait_for("reloaded")
        assert requests.get(f"{server.url}/moved/noarch/repodata.json", timeout=30).ok
        assert (
            requests.get(f"{server.url}/chan/noarch/repodata.json", timeout=30).status_code == 404
        )
        status = json.loads(requests.get(f"{server.url}/api/status", timeout=30).text)
        assert [c["name"] for c in status["channels"]] == ["moved"]
    finally:
        assert server.stop() == 0
