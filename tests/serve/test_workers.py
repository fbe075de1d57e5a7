"""`reconcile serve --workers N`: several processes on one port, as one server.

Real processes on 127.0.0.1: the supervisor and its workers, an upstream that
misbehaves on request. What must hold whichever process answers: the metrics add up,
a passive file is fetched once, a failed fetch is answered from the negative cache,
signals reach every process, and a worker that dies is replaced.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler import cli
from reconciler.kinds.conda.indexer import index_channel
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.serve.helpers import ServeProcess

pytestmark = pytest.mark.slow

PACKAGE = "/linux-64/app-2.0-0.conda"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("app", "2.0", subdir="linux-64"))
    build_package(upstream, PackageSpec("lib", "1.0", subdir="linux-64"))
    index_channel(upstream)
    with faulty_server(upstream) as (url, state):
        config = tmp_path / "channels.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
            "    subdirs: [linux-64, noarch]\n    mirrors:\n"
            f"      - {{name: up, source: '{url}', mode: passive, retries: 0, timeout: 10}}\n"
        )
        assert cli.main(["apply", "-c", str(config)]) == 0
        runtime = tmp_path / "run"
        runtime.mkdir()
        server = ServeProcess(config, "--workers", "2", cwd=tmp_path, env={"TMPDIR": str(runtime)})
        try:
            yield {"server": server, "state": state, "runtime": runtime, "upstream": upstream}
        finally:
            server.stop()


def _workers(pid: int, count: int, timeout: float = 15) -> list[int]:
    """The pids of ``pid``'s children, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) == count:
            return sorted(map(int, children))
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(children)} worker processes, not {count}")
        time.sleep(0.05)


def _owner(connection: http.client.HTTPConnection, server_port: int, workers: list[int]) -> int:
    """Which worker process holds the server side of ``connection`` (from /proc)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    assert inode is not None, "the server side of the connection is not listed"
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError("no worker holds the connection")


def _connections(url: str, workers: list[int]) -> dict[int, http.client.HTTPConnection]:
    """A kept-alive connection to each worker: requests on it are answered by that one."""
    host, port = url.removeprefix("http://").split(":")
    found: dict[int, http.client.HTTPConnection] = {}
    spare = []
    for _ in range(64):  # the kernel spreads connections by a hash of their addresses
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        _get(connection, "/api/status")
        owner = _owner(connection, int(port), workers)
        if owner in found:
            spare.append(connection)
        else:
            found[owner] = connection
        if len(found) == len(workers):
            break
    for connection in spare:
        connection.close()
    assert sorted(found) == sorted(workers), "connections did not reach every worker"
    return found


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes, str]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("Retry-After") or ""


def _asked(state: dict[str, Any], path: str) -> int:
    return sum(1 for r in state["requests"] if r == path)


def _fresh_get(url: str) -> requests.Response:
    with requests.Session() as session:  # a connection of its own: any worker may take it
        return session.get(url, timeout=30, headers={"Connection": "close"})


def _metric(text: str, line_start: str) -> float:
    found = re.search(re.escape(line_start) + r" (\S+)", text)
    assert found, f"{line_start} not in the metrics:\n{text}"
    return float(found.group(1))


def test_the_processes_answer_on_one_port_and_their_metrics_add_up(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    assert "with 2 processes" in server.text()
    workers = _workers(server.process.pid, 2)
    connections = _connections(server.url, workers)
    for pid, count in zip(workers, (7, 13), strict=True):
        for _ in range(count):
            assert _get(connections[pid], "/chan/linux-64/repodata.json")[0] == 200
    time.sleep(2.5)  # every process publishes what it counted each second
    counted = 'reconcile_serve_requests_total{channel="chan",code="200",kind="conda"}'
    published = {  # named <pid>-<random>.json
        int(p.name.split("-")[0]): p.read_text()
        for p in setup["runtime"].glob("reconcile-serve-*/metrics/*")
    }
    assert sorted(published) == workers
    for pid, count in zip(workers, (7, 13), strict=True):  # each counted its own
        samples = [
            value
            for _name, _kind, _help, family in json.loads(published[pid])
            for sample, labels, value in family
            if sample == "reconcile_serve_requests_total"
            and labels == {"channel": "chan", "code": "200", "kind": "conda"}
        ]
        assert samples == [count]
    for pid in workers:  # whichever process answers the scrape, the sums are the same
        status, body, _ = _get(connections[pid], "/metrics")
        assert status == 200
        text = body.decode()
        assert _metric(text, counted) == 20
        # The figures read from disk are not added up once per process.
        assert _metric(text, 'reconcile_mirror_packages{channel="chan",mirror="up"}') == 2


def test_a_passive_file_is_fetched_once_whichever_process_is_asked(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    first, second = _workers(server.process.pid, 2)
    connections = _connections(server.url, [first, second])
    state = setup["state"]
    state["faults"][PACKAGE] = ["delay"]  # the first fetch takes a while
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(_get, connections[first], f"/chan{PACKAGE}")
        deadline = time.monotonic() + 15
        while _asked(state, PACKAGE) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # The first process's fetch is under way: ask the second one now.
        late = _get(connections[second], f"/chan{PACKAGE}")
        answers = [early.result(), late]
    expected = (setup["upstream"] / PACKAGE.lstrip("/")).read_bytes()
    assert [status for status, _, _ in answers] == [200, 200]
    assert all(body == expected for _, body, _ in answers)
    assert _asked(state, PACKAGE) == 1


def test_a_failed_fetch_is_answered_from_the_negative_cache_by_every_process(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    workers = _workers(server.process.pid, 2)
    connections = _connections(server.url, workers)
    setup["state"]["faults"][PACKAGE] = ["500"] * 20
    assert _get(connections[workers[0]], f"/chan{PACKAGE}")[0] == 502
    for pid in (workers[1], workers[0]):
        status, body, retry_after = _get(connections[pid], f"/chan{PACKAGE}")
        assert status == 502 and b"not asked again for" in body
        assert 1 <= int(retry_after) <= 60
    assert _asked(setup["state"], PACKAGE) == 1


def test_a_reload_reaches_every_process_and_the_ones_started_after_it(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    server: ServeProcess = setup["server"]
    parent = server.process.pid
    workers = _workers(parent, 2)
    extra = tmp_path / "extra"
    build_package(extra, PackageSpec("tool", "1.0", subdir="linux-64"))
    index_channel(extra)
    config = tmp_path / "channels.yaml"
    config.write_text(config.read_text() + "  - {name: extra, path: ./extra}\n")
    os.kill(parent, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while server.text().count("reloaded") < 2:
        assert time.monotonic() < deadline, server.text()
        time.sleep(0.05)
    for connection in _connections(server.url, workers).values():
        assert _get(connection, "/extra/linux-64/repodata.json")[0] == 200

    os.kill(workers[0], signal.SIGKILL)
    server.wait_for(f"(pid {workers[0]}) ended (signal 9): starting another")
    replaced = _workers(parent, 2)
    assert workers[0] not in replaced and workers[1] in replaced
    time.sleep(0.5)  # the new one listening
    for connection in _connections(server.url, replaced).values():  # the new one too
        assert _get(connection, "/extra/linux-64/repodata.json")[0] == 200

    assert server.stop() == 0
    for pid in replaced:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert list(setup["runtime"].iterdir()) == []  # the shared folder is gone


def _start_in_session(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """`reconcile serve` as the leader of a process group of its own (as in a terminal)."""
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "-c", str(config), "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=config.parent,
        start_new_session=True,
    )


def _wait_for_text(log: Path, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := log.read_text()):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    return text


def test_ctrl_c_stops_every_process_cleanly_and_keeps_the_access_log(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    setup["server"].stop()
    log, access = tmp_path / "group.log", tmp_path / "access.log"
    process = _start_in_session(
        tmp_path / "channels.yaml", "--workers", "3", "--access-log", str(access), log=log
    )
    try:
        text = _wait_for_text(log, " on http://")
        url = text.split(" on ", 1)[1].split()[0].rstrip("/")
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: _fresh_get(f"{url}/chan/linux-64/repodata.json"), range(120))
            )
        assert all(a.status_code == 200 for a in answers)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert process.wait(timeout=60) == 0
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    lines = access.read_text().splitlines()
    assert sum(" 200 " in line and "repodata.json" in line for line in lines) == 120


def test_workers_end_with_a_supervisor_that_was_killed(setup: dict[str, Any]) -> None:
    server: ServeProcess = setup["server"]
    workers = _workers(server.process.pid, 2)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


def test_a_port_in_use_and_an_access_log_that_cannot_be_written_are_clear_errors(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = int(setup["server"].url.rsplit(":", 1)[1])
    config = str(tmp_path / "channels.yaml")
    for workers in ("1", "2"):
        code = cli.main(["serve", "-c", config, "--port", str(taken), "--workers", workers])
        assert code == 1
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1 port {taken}" in err and "Traceback" not in err
        code = cli.main(
            ["serve", "-c", config, "--workers", workers, "--access-log", "/nonexistent/a.log"]
        )
        assert code == 1
        assert "cannot open the access log /nonexistent/a.log" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_worker_count_below_one_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "-c", "channels.yaml", "--workers", value])
    assert exit_info.value.code == 2
    assert "--workers" in capsys.readouterr().err
