"""A running apply shows where it is: an upstream holds one download back while the
pages are read, then lets it go; the pages refresh themselves only meanwhile."""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from reconciler.config.models import load_config
from reconciler.engine import layout
from reconciler.engine.apply import apply
from reconciler.kinds import REGISTRY
from reconciler.kinds.conda.indexer import index_channel
from tests.packages import PackageSpec, build_package
from tests.serve.helpers import running

HELD = "/linux-64/gamma-1.0-0.conda"
REFRESH = '<meta http-equiv="refresh"'


class _Holding(SimpleHTTPRequestHandler):
    """Serves a folder; the file at ``HELD`` waits until the test releases it."""

    def send_head(self) -> Any:
        if self.path == HELD:
            self.server.release.wait(60)  # type: ignore[attr-defined]
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    root = tmp_path / "upstream"
    for name in ("alpha", "beta", "gamma"):
        build_package(root, PackageSpec(name, "1.0", subdir="linux-64"))
    index_channel(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Holding, directory=root))
    release = threading.Event()
    server.release = release  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def _wait_for(url: str, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := requests.get(url, timeout=30).text):
        assert time.monotonic() < deadline, f"{needle!r} never showed:\n{text[-3000:]}"
        time.sleep(0.1)
    return text


def test_a_running_apply_shows_its_step_and_progress(
    tmp_path: Path, upstream: tuple[str, threading.Event]
) -> None:
    url, release = upstream
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: live\n    path: ./live\n    subdirs: [linux-64]\n"
        f"    mirrors:\n      - {{name: up, source: '{url}', retries: 0, timeout: 60}}\n"
    )
    loaded = load_config(config)
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(apply(loaded, REGISTRY)), daemon=True)
    with running(config) as server:
        base = server.url
        try:
            worker.start()
            page = _wait_for(f"{base}/-/mirror/live/up", "downloading 2/3 files")
            assert REFRESH in page  # it reloads itself while the run goes on
            assert '<progress value="2" max="3"></progress>' in page
            status = requests.get(f"{base}/api/status", timeout=30).json()["channels"][0]
            progress = status["progress"]
            assert (progress["step"], progress["done"], progress["total"]) == ("downloading", 2, 3)
            assert 0 < progress["bytes_done"] < progress["bytes_total"]
            assert status["mirrors"][0]["progress"] == progress
            assert status["mirrors"][0]["state"] == "running"
            assert progress["mirrors"] == {"up": status["mirrors"][0]["last_run"]["run_id"]}
            for path in ("/", "/-/mirrors", "/-/channel/live", f"/-/run/live/{progress['run_id']}"):
                text = requests.get(base + path, timeout=30).text
                assert REFRESH in text and "downloading 2/3 files" in text, path
            mirror_run = progress["mirrors"]["up"]
            run_page = requests.get(f"{base}/-/run/live/{mirror_run}", timeout=30).text
            assert "downloading 2/3 files" in run_page and REFRESH in run_page
        finally:
            release.set()
            worker.join(timeout=60)
        assert not worker.is_alive() and result[0][1].result == "completed"

        page = requests.get(f"{base}/-/mirror/live/up", timeout=30).text
        assert REFRESH not in page and "downloading" not in page
        assert '<span class="completed">completed</span>' in page
        status = requests.get(f"{base}/api/status", timeout=30).json()["channels"][0]
        assert status["progress"] is None and status["mirrors"][0]["progress"] is None
        assert REFRESH not in requests.get(f"{base}/", timeout=30).text
    written = orjson.loads((tmp_path / "live" / layout.PROGRESS).read_bytes())
    assert written["state"] == "completed" and written["finished"]
    assert written["step"] == "finished"


def test_a_dead_run_s_progress_is_not_shown_as_running(tmp_path: Path) -> None:
    """A run killed mid-download left its progress file and a running history line."""
    from reconciler.engine.history import History, new_run
    from reconciler.engine.progress import ProgressRecorder
    from reconciler.store.local import LocalStore

    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
        "    mirrors: [{name: up, source: ./up}]\n"
    )
    store = LocalStore(tmp_path / "chan")
    history = History(store)
    run = history.transition(history.append(new_run("chan", None)), "running")
    mirror = history.transition(history.append(new_run("chan", "up")), "running")
    recorder = ProgressRecorder(store, run.run_id, {"up": mirror.run_id})
    recorder.start("downloading 5 files", 500, unit="bytes", files=5)
    with running(config) as server:
        for path in ("/-/mirror/chan/up", f"/-/run/chan/{mirror.run_id}", "/-/mirrors", "/"):
            text = requests.get(server.url + path, timeout=30).text
            assert "downloading" not in text and REFRESH not in text, path
            assert "interrupted: no process holds the lock" in text, path
        view = requests.get(f"{server.url}/-/mirror/chan/up?format=json", timeout=30).json()
        assert view["mirror"]["progress"] is None
        assert view["mirror"]["last_run"]["interrupted"] is True
        # The same file while a process holds the lock (its run goes on): shown.
        with store.lock(timeout=0, command="reconcile apply"):
            text = requests.get(f"{server.url}/-/mirror/chan/up", timeout=30).text
            assert "downloading 0/5 files" in text and REFRESH in text
            assert re.search(r"updated \d+ s ago", text)
