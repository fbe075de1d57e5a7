"""`reconcile serve --workers N`: several processes on one port, as one server.

Real processes on 127.0.0.1: the supervisor and its workers, an upstream that
misbehaves on request. What must hold whichever process answers: the metrics add up,
a passive file is fetched once, a failed fetch is answered from the negative cache,
signals reach every process, and a worker that dies is replaced.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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


@contextmanager
def _only(answering: int, workers: list[int]) -> Iterator[None]:
    """Only the worker ``answering`` takes connections: the others are stopped (SIGSTOP),
    so a test knows which process answers, and continued afterwards."""
    stopped = [pid for pid in workers if pid != answering]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


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
    url = f"{server.url}/chan/linux-64/repodata.json"
    for answering, count in zip(workers, (7, 13), strict=True):
        with _only(answering, workers), ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _fresh_get(url), range(count)))
        assert [a.status_code for a in answers] == [200] * count
    time.sleep(2.5)  # every process publishes what it counted each second
    counted = 'reconcile_serve_requests_total{channel="chan",code="200",kind="conda"}'
    published = {
        int(p.stem): p.read_text() for p in setup["runtime"].glob("reconcile-serve-*/metrics/*")
    }
    assert sorted(published) == workers
    assert [f'"{counted.split("{")[0]}"' in text for text in published.values()] == [True] * 2
    for answering in workers:  # whichever process answers the scrape, the sums are the same
        with _only(answering, workers):
            text = _fresh_get(f"{server.url}/metrics").text
        assert _metric(text, counted) == 20
        # The figures read from disk are not added up once per process.
        assert _metric(text, 'reconcile_mirror_packages{channel="chan",mirror="up"}') == 2


def test_a_passive_file_is_fetched_once_whichever_process_is_asked(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    first, second = workers = _workers(server.process.pid, 2)
    state = setup["state"]
    state["faults"][PACKAGE] = ["delay"]  # the first fetch takes a while
    url = f"{server.url}/chan{PACKAGE}"
    with ThreadPoolExecutor(2) as pool:
        os.kill(second, signal.SIGSTOP)
        early = pool.submit(_fresh_get, url)  # taken by the first process, which fetches
        deadline = time.monotonic() + 15
        while _asked(state, PACKAGE) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The fetch is under way: now only the second process takes connections.
        os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)
        try:
            late = pool.submit(_fresh_get, url)
            time.sleep(1.0)  # time enough for the second process to fetch, if it would
        finally:
            os.kill(first, signal.SIGCONT)
        answers = [early.result(), late.result()]
    expected = (setup["upstream"] / PACKAGE.lstrip("/")).read_bytes()
    assert [a.status_code for a in answers] == [200, 200]
    assert all(a.content == expected for a in answers)
    assert _asked(state, PACKAGE) == 1
    assert sorted(workers) == _workers(server.process.pid, 2)


def test_a_failed_fetch_is_answered_from_the_negative_cache_by_every_process(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    workers = _workers(server.process.pid, 2)
    setup["state"]["faults"][PACKAGE] = ["500"] * 20
    with _only(workers[0], workers):
        assert _fresh_get(f"{server.url}/chan{PACKAGE}").status_code == 502
    for answering in (workers[1], workers[0]):
        with _only(answering, workers):
            again = _fresh_get(f"{server.url}/chan{PACKAGE}")
        assert again.status_code == 502 and "not asked again for" in again.text
        assert 1 <= int(again.headers["Retry-After"]) <= 60
    assert _asked(setup["state"], PACKAGE) == 1


def test_signals_reach_every_process_and_a_dead_one_is_replaced(
    setup: dict[str, Any],
) -> None:
    server: ServeProcess = setup["server"]
    parent = server.process.pid
    workers = _workers(parent, 2)
    os.kill(parent, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while server.text().count("reloaded") < 2:
        assert time.monotonic() < deadline, server.text()
        time.sleep(0.05)

    os.kill(workers[0], signal.SIGKILL)
    server.wait_for(f"(pid {workers[0]}) ended (signal 9): starting another")
    replaced = _workers(parent, 2)
    assert workers[0] not in replaced and workers[1] in replaced
    for _ in range(10):
        assert _fresh_get(f"{server.url}/chan/linux-64/repodata.json").status_code == 200

    assert server.stop() == 0
    for pid in replaced:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert list(setup["runtime"].iterdir()) == []  # the shared folder is gone
