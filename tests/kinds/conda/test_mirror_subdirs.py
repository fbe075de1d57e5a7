"""A mirror's subdirs are fetched at once when a name gate keeps few of their records,
one at a time otherwise; what comes of it is the same, in subdir order."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import zstandard

from reconciler.conda import window_scan
from reconciler.config.models import Channel, load_config
from reconciler.kinds.conda import mirrors
from reconciler.kinds.conda import upstream as upstream_module
from tests.http_server import serve_directory
from tests.kinds.conda.test_selection_cache import record, resolve, summary, write_upstream


@dataclass
class Meeting:
    """What the upstream saw: repodata requests in flight at once, at most."""

    wait_for: int = 1  # hold a repodata request until this many were in flight (or timeout)
    hold: float = 0.0  # then hold it this long more
    timeout: float = 5.0
    fail: dict[str, tuple[int, float]] = field(default_factory=dict)  # subdir → status, delay
    slow: dict[str, float] = field(default_factory=dict)  # subdir → seconds its body takes
    asked: dict[str, int] = field(default_factory=dict)  # subdir → repodata requests
    in_flight: int = 0
    most: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)


class _Handler(SimpleHTTPRequestHandler):
    meeting: Meeting

    def do_GET(self) -> None:
        if "/repodata" not in self.path:
            super().do_GET()
            return
        meeting = self.meeting
        subdir = self.path.strip("/").split("/")[0]
        with meeting.changed:
            meeting.asked[subdir] = meeting.asked.get(subdir, 0) + 1
            meeting.in_flight += 1
            meeting.most = max(meeting.most, meeting.in_flight)
            meeting.changed.notify_all()
            # Wait for the meeting to have happened, not to be happening still: the
            # request that completes it may be answered before this one wakes.
            meeting.changed.wait_for(
                lambda: meeting.most >= meeting.wait_for, timeout=meeting.timeout
            )
        time.sleep(meeting.hold)
        try:
            if subdir in meeting.fail:
                status, delay = meeting.fail[subdir]
                time.sleep(delay)
                self.send_error(status)
                return
            if subdir in meeting.slow:
                self._dribble(meeting.slow[subdir])
                return
            super().do_GET()
        finally:
            with meeting.changed:
                meeting.in_flight -= 1

    def _dribble(self, seconds: float) -> None:
        """A body that takes ``seconds`` to arrive (a slow link), 100 pieces."""
        body = (Path(self.directory) / self.path.strip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        step = max(len(body) // 100, 1)
        with contextlib.suppress(OSError):  # the client may stop reading, as it should
            for at in range(0, len(body), step):
                self.wfile.write(body[at : at + step])
                self.wfile.flush()
                time.sleep(seconds / 100)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, Meeting]]:
    root = tmp_path / "upstream"
    write_upstream(root)
    meeting = Meeting()
    handler = type("Handler", (_Handler,), {"meeting": meeting})
    with serve_directory(root, handler) as (url, _):
        yield url, meeting


def channel(
    tmp_path: Path,
    url: str,
    *,
    dependencies: bool = False,
    include: bool = True,
    retries: int = 0,
    subdirs: str = "linux-64, noarch",
) -> Channel:
    rules = "include: [{name: app}, {name: gpl}]" if include else "exclude: [{name: gpl}]"
    config = tmp_path / "channels.yaml"
    config.write_text(
        f"""version: 1
channels:
  - name: c
    path: {tmp_path / "channel"}
    subdirs: [{subdirs}]
    mirrors:
      - name: up
        source: {url}
        mode: passive
        retries: {retries}
        filters:
          {rules}
          latest: 2
          dependencies: {str(dependencies).lower()}
"""
    )
    found = load_config(config).config.channels[0]
    assert isinstance(found, Channel)
    return found


def failed_with(resolution: Any, where: str, status: str) -> None:
    """The mirror failed, its error naming ``where`` (a subdir or URL part) and ``status``."""
    error = resolution.mirrors[0].error
    assert error is not None and where in error and status in error, error


def no_subdir_thread() -> bool:
    """No thread fetching a subdir is left (the mirror's pool waited for them all)."""
    return not [t for t in threading.enumerate() if t.name.startswith("reconcile-subdir")]


# Mirrors whose gate does not name what it lets in: each document is read whole.
NO_NAME_GATE = pytest.mark.parametrize(
    "dependencies, include",
    [(True, True), (False, False)],
    ids=["dependency-closure", "every-name"],
)


def test_a_name_gate_fetches_the_subdirs_at_once(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # Each subdir's request waits for the other's: fetched one after the other, the
    # first would wait out the timeout alone.
    meeting.wait_for, meeting.timeout = 2, 10.0
    started = time.monotonic()
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    assert meeting.most == 2
    assert time.monotonic() - started < meeting.timeout
    assert resolution.mirrors[0].error is None
    assert set(resolution.records) == {"linux-64", "noarch"}


def test_at_once_selects_what_one_after_the_other_does(
    tmp_path: Path, upstream: tuple[str, Meeting], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, meeting = upstream
    meeting.wait_for, meeting.timeout = 2, 10.0  # each request waits for the other
    at_once = summary(resolve(channel(tmp_path, url), tmp_path / "cache-1"))
    assert meeting.most == 2
    monkeypatch.setattr(mirrors, "SUBDIR_FETCHES", 1)
    meeting.most, meeting.wait_for = 0, 1
    one_by_one = summary(resolve(channel(tmp_path, url), tmp_path / "cache-2"))
    assert meeting.most == 1
    assert at_once == one_by_one
    assert at_once["selected"]
    assert any("refusing 'app-9.0-h0/../../evil.conda'" in w for w in at_once["warnings"])


@NO_NAME_GATE
def test_without_a_name_gate_downloads_overlap_but_documents_are_read_one_at_a_time(
    tmp_path: Path,
    upstream: tuple[str, Meeting],
    monkeypatch: pytest.MonkeyPatch,
    dependencies: bool,
    include: bool,
) -> None:
    url, meeting = upstream
    # The dependency closure may need any name, and no include rule names what it lets
    # in: each document is read whole, so only one is read at a time (and, for a gate,
    # what the selection reads is read before the next); the downloads still overlap.
    meeting.wait_for, meeting.timeout = 2, 10.0
    reading: list[int] = [0, 0]  # now, most at once
    lock = threading.Lock()
    real = upstream_module.parse_sparse

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            reading[0] += 1
            reading[1] = max(reading)
        time.sleep(0.2)  # long enough for two readings to overlap if they could
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                reading[0] -= 1

    monkeypatch.setattr(upstream_module, "parse_sparse", counted)
    started = time.monotonic()
    chan = channel(tmp_path, url, dependencies=dependencies, include=include)
    resolution = resolve(chan, tmp_path / "cache")
    assert meeting.most == 2
    assert time.monotonic() - started < meeting.timeout
    assert reading[1] == 1
    assert resolution.mirrors[0].error is None
    assert set(resolution.records) == {"linux-64", "noarch"}
    # Read as they were fetched (at once), not later.
    for metadata in resolution.mirrors[0].metadata.values():
        assert metadata.parsed.ready


@NO_NAME_GATE
def test_without_a_name_gate_the_selection_is_the_same(
    tmp_path: Path,
    upstream: tuple[str, Meeting],
    monkeypatch: pytest.MonkeyPatch,
    dependencies: bool,
    include: bool,
) -> None:
    url, _ = upstream
    chan = channel(tmp_path, url, dependencies=dependencies, include=include)
    at_once = summary(resolve(chan, tmp_path / "cache-1"))
    monkeypatch.setattr(mirrors, "SUBDIR_FETCHES", 1)
    one_by_one = summary(resolve(chan, tmp_path / "cache-2"))
    assert at_once == one_by_one
    assert at_once["selected"]


def test_the_first_subdirs_error_is_the_one_told(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # Once both are in flight, noarch fails at once, linux-64 (first in order) a moment
    # later: the error told is linux-64's, as when they were fetched one after the other.
    meeting.wait_for, meeting.timeout = 2, 10.0
    meeting.fail = {"linux-64": (403, 0.5), "noarch": (404, 0.0)}
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    failed_with(resolution, "linux-64/repodata.json", "403")
    assert meeting.most == 2
    assert resolution.mirrors[0].selection is None


def test_a_missing_subdir_is_warned_about_in_order(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    meeting.fail = {"linux-64": (404, 0.3)}
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    assert resolution.mirrors[0].error is None
    missing = [w.message for w in resolution.warnings if "upstream has no" in w.message]
    assert len(missing) == 1 and "upstream has no linux-64" in missing[0], missing
    assert resolution.records.get("noarch")
    assert not resolution.records.get("linux-64")


def test_no_fetching_thread_outlives_a_failed_mirror(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # linux-64 fails at once; noarch is still being answered when the error is taken.
    meeting.hold = 0.5
    meeting.fail = {"linux-64": (403, 0.0)}
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    failed_with(resolution, "linux-64", "403")
    assert no_subdir_thread()
    with meeting.changed:  # noarch's request was answered (or dropped), not left hanging
        assert meeting.changed.wait_for(lambda: meeting.in_flight == 0, timeout=5)


def test_a_failed_subdir_stops_the_others_retries(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # linux-64 is refused at once; noarch fails in a way worth retrying (0.5 + 1 + 2 s
    # of backoff). The mirror's error is told without waiting those out.
    meeting.wait_for, meeting.timeout = 2, 10.0
    meeting.fail = {"linux-64": (403, 0.0), "noarch": (503, 0.0)}
    started = time.monotonic()
    resolution = resolve(channel(tmp_path, url, retries=3), tmp_path / "cache")
    failed_with(resolution, "linux-64", "403")
    assert time.monotonic() - started < 2.5
    assert meeting.asked["noarch"] <= 2  # not 4: the retries stopped


def test_a_failed_subdir_stops_a_body_still_arriving(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # noarch's body takes 6 s to arrive; linux-64 is refused once both are under way.
    meeting.wait_for, meeting.timeout = 2, 10.0
    meeting.fail = {"linux-64": (403, 0.3)}
    meeting.slow = {"noarch": 6.0}
    started = time.monotonic()
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    failed_with(resolution, "linux-64", "403")
    assert time.monotonic() - started < 3.0
    assert no_subdir_thread()


def test_a_failed_subdir_stops_the_later_ones_while_an_earlier_one_still_arrives(
    tmp_path: Path, upstream: tuple[str, Meeting]
) -> None:
    url, meeting = upstream
    # linux-64 (first) takes 3 s to arrive; noarch is refused at once; osx-64 fails in
    # a way worth retrying. noarch's error is the one told (linux-64 succeeds), so
    # osx-64's result is not wanted from the moment noarch failed.
    meeting.fail = {"noarch": (403, 0.0), "osx-64": (503, 0.0)}
    meeting.slow = {"linux-64": 3.0}
    chan = channel(tmp_path, url, retries=4, subdirs="linux-64, noarch, osx-64")
    resolution = resolve(chan, tmp_path / "cache")
    failed_with(resolution, "noarch", "403")
    # Not 5: its retries stopped (none at all, when noarch was refused before osx-64's
    # thread asked).
    assert meeting.asked.get("osx-64", 0) <= 2


@pytest.mark.parametrize("link", ["fast", "slow"])
def test_a_failed_subdir_stops_a_document_being_read_through_the_window(
    tmp_path: Path, upstream: tuple[str, Meeting], monkeypatch: pytest.MonkeyPatch, link: str
) -> None:
    url, meeting = upstream
    # noarch: an indented document of 3,000 records, read through a small window, each
    # window taking 50 ms (about 5 s in all); linux-64 is refused once noarch is being
    # read. Over a slow link noarch is read as it arrives, on a thread of its own, and
    # has arrived whole (in 1 s) before linux-64 fails: only the window's check stops it.
    packages = {f"app-{i}.0-h0_0.conda": record("app", f"{i}.0", "noarch") for i in range(3000)}
    body = json.dumps({"info": {"subdir": "noarch"}, "packages.conda": packages}, indent=1)
    (tmp_path / "upstream" / "noarch" / "repodata.json.zst").write_bytes(
        zstandard.ZstdCompressor(write_content_size=True).compress(body.encode())
    )
    monkeypatch.setattr(window_scan, "WINDOW", 16 * 1024)
    windows: list[float] = []
    consume = window_scan._Scan._consume

    def slow(self: Any, ended: bool) -> None:
        windows.append(time.monotonic())
        time.sleep(0.05)
        consume(self, ended)

    monkeypatch.setattr(window_scan._Scan, "_consume", slow)
    meeting.fail = {"linux-64": (403, 0.5 if link == "fast" else 1.5)}
    if link == "slow":
        meeting.slow = {"noarch": 1.0}
    started = time.monotonic()
    resolution = resolve(channel(tmp_path, url), tmp_path / "cache")
    failed_with(resolution, "linux-64", "403")
    assert time.monotonic() - started < (2.5 if link == "fast" else 3.5)
    assert windows, "noarch was not read through the window"
    assert len(windows) < len(body) // (16 * 1024)  # stopped well before its end
    assert no_subdir_thread()
