"""The admin views without a server: filters named by their keys, escaping, package search
and pages, the timeline's scale, run details, the progress file and when it is shown."""

from __future__ import annotations

import itertools
import re
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from reconciler.config.models import LoadedConfig, load_config
from reconciler.engine import layout
from reconciler.engine.history import EXAMPLES, FAILURES, TEXT_LIMIT, History, new_run, run_details
from reconciler.engine.plan import Action, Reason
from reconciler.engine.progress import (
    STEP_DOWNLOADING,
    STEP_INDEXING,
    WRITE_INTERVAL,
    ProgressRecorder,
)
from reconciler.engine.status import (
    channel_filters,
    channel_status,
    describe_rule,
    mirror_filters,
    read_progress,
)
from reconciler.filters import describe_rule as filters_describe_rule
from reconciler.kinds import REGISTRY
from reconciler.serve import auth, views
from reconciler.serve.packages import PackageListings, packages_page
from reconciler.serve.status import render_status_html, timeline, timeline_scale
from reconciler.store.local import LocalStore
from tests.conftest import REPO_ROOT

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


# -- filters ------------------------------------------------------------------------------------


def test_filters_are_named_by_their_keys_as_plans_name_rules() -> None:
    loaded = load_config(REPO_ROOT / "examples" / "channels.yaml")
    internal, _, pypi = loaded.config.channels
    assert [f"{r.key}: {r.rule}" for r in channel_filters(internal, 0)] == [
        "channels[0].filters.exclude[0]: license: GPL, "
        "except name: libgcc* or name: libstdcxx* or name: libgomp",
        "channels[0].filters.exclude[1]: name: pywin32, subdir: win-*",
    ]
    assert [f"{r.key}: {r.rule}" for r in mirror_filters(internal, 0, 0)] == [
        "channels[0].mirrors[0].filters.include[0]: spec: demo-app >=1.0",
        "channels[0].mirrors[0].filters.include[1]: name: demo-lib, version: >=1.1",
        "channels[0].mirrors[0].filters.include[2]: name: demo-*, build: py311*, "
        "license_family: MIT",
        "channels[0].mirrors[0].filters.date: after 2023-01-01",
        "channels[0].mirrors[0].filters.latest: 3",
        "channels[0].mirrors[0].filters.dependencies: true",
    ]
    assert [f"{r.key}: {r.rule}" for r in mirror_filters(internal, 0, 1)] == [
        "channels[0].mirrors[1].filters.include[0]: name: demo-app, version: >=2",
        "channels[0].mirrors[1].filters.date: after 2024-06-01, before 2030-01-01",
    ]
    assert [f"{r.key}: {r.rule}" for r in channel_filters(pypi, 2)] == [
        "channels[2].filters.wheel_tags.exclude[0]: platform: win*"
    ]
    assert [f"{r.key}: {r.rule}" for r in mirror_filters(pypi, 2, 0)] == [
        "channels[2].mirrors[0].filters.prerelease: false",
        "channels[2].mirrors[0].filters.yanked: false",
        "channels[2].mirrors[0].filters.kinds: wheel, sdist",
        "channels[2].mirrors[0].filters.latest: 2",
    ]
    # The same words as the filter engine's reasons (which plans and explain print).
    rules = [*internal.filters.exclude, *internal.mirrors[0].filters.include]
    rules += [keep for rule in internal.filters.exclude for keep in rule.except_]
    for rule in rules:
        assert describe_rule(rule) == filters_describe_rule(rule)


# -- a channel with hostile content ------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Any]:
    """A channel whose filters, mirror source, history and index hold markup."""
    config = tmp_path / "channels.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            version: 1
            serve:
              tokens: [{name: readers, token_env: VIEWS_TEST_TOKEN, channels: [secret]}]
            channels:
              - name: chan
                path: ./chan
                subdirs: [linux-64]
                filters:
                  exclude:
                    - name: '"><b>bold</b>*'
                      except: [{build: "<i>*"}, {name: x, build: y}]
                mirrors:
                  - {name: up, source: "./up<script>", schedule: "0 3 * * *"}
              - {name: secret, access: private, path: ./secret}
            """
        )
    )
    store = LocalStore(tmp_path / "chan")
    history = History(store)
    run = history.append(new_run("chan", None))
    run = history.transition(run, "running")
    run = history.transition(
        run,
        "failed",
        error=HOSTILE,
        details=run_details(
            [
                Action(
                    kind="remove",
                    location="linux-64",
                    name="evil<b>-1.0-0.conda",
                    source="up",
                    reason=Reason.FILTERED,
                    detail=f"excluded by {HOSTILE}",
                )
            ],
            [HOSTILE],
            links={"mirror_runs": {}},
        ),
    )
    # A run id is text from a file: one with quotes and markup must not break a page.
    odd = history.append(replace(new_run("chan", "up"), run_id='a"b<c', state="completed"))
    repodata = {
        "info": {"subdir": "linux-64"},
        "packages": {},
        "packages.conda": {
            "evil<b>-1.0-0.conda": {
                "name": "evil<b>",
                "version": "1.0",
                "build": "0",
                "license": HOSTILE,
                "size": 10,
            }
        },
    }
    store.write("linux-64/repodata.json", orjson.dumps(repodata))
    store.write("noarch/repodata.json", orjson.dumps({"packages": {}}))
    return {"loaded": load_config(config), "run": run, "odd": odd}


def _respond(loaded: LoadedConfig, path: str, grant: auth.Grant = auth.ANONYMOUS) -> views.Answer:
    segments, _, query = path.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    return views.respond(loaded, grant, segments.split("/"), params, PackageListings())


def _no_markup(text: str) -> None:
    assert "<script" not in text and "<img" not in text and "<b>" not in text, text
    assert "<i>" not in text and 'a"b<c' not in text


def test_every_view_escapes_names_errors_filters_and_packages(hostile: dict[str, Any]) -> None:
    loaded = hostile["loaded"]
    pages = {
        "mirrors": _respond(loaded, "mirrors"),
        "channel": _respond(loaded, "channel/chan?q=evil"),
        "mirror": _respond(loaded, "mirror/chan/up"),
        "run": _respond(loaded, f"run/chan/{hostile['run'].run_id}"),
    }
    for name, answer in pages.items():
        assert answer.status == 200, (name, answer.body)
        text = answer.body.decode()
        _no_markup(text)
        assert 'href="/' not in text and "<script" not in text  # relative links, no script
    channel = pages["channel"].body.decode()
    assert "&quot;&gt;&lt;b&gt;bold&lt;/b&gt;*" in channel  # the filter value, escaped
    assert "except build: &lt;i&gt;* or (name: x, build: y)" in channel
    assert "evil&lt;b&gt;-1.0-0.conda" in channel  # the package, escaped, and its link quoted
    assert 'href="../../chan/linux-64/evil%3Cb%3E-1.0-0.conda"' in channel
    run = pages["run"].body.decode()
    assert "excluded by &quot;&gt;&lt;script&gt;" in run
    mirror = pages["mirror"].body.decode()
    assert "up&lt;script&gt;" in mirror
    # A run id from the history is quoted in links and escaped as text.
    assert 'href="../../../-/run/chan/a%22b%3Cc"' in mirror
    overview = render_status_html(
        {
            "generated": "2026-01-01T00:00:00.000Z",
            "channels": [{"name": HOSTILE, "access": "private"}],
        }
    )
    _no_markup(overview)


def test_views_of_a_private_channel_follow_the_server_policy(hostile: dict[str, Any]) -> None:
    loaded = hostile["loaded"]
    for path in ("channel/secret", "mirror/secret/up", "mirror/secret/nothing", "run/secret/x"):
        anonymous = _respond(loaded, path)
        assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
        other = _respond(loaded, path, auth.Grant(True, ("others",), frozenset({"chan"})))
        assert other.status == 403
    granted = auth.Grant(True, ("readers",), frozenset({"secret"}))
    assert _respond(loaded, "channel/secret", granted).status == 200
    assert _respond(loaded, "mirror/secret/nothing", granted).status == 404
    assert _respond(loaded, "channel/nothing").status == 404
    listed = orjson.loads(_respond(loaded, "mirrors?format=json").body)
    assert listed["private_channels"] == ["secret"]
    assert [m["channel"] for m in listed["mirrors"]] == ["chan"]
    moved = _respond(loaded, "channel/chan/")
    assert moved.status == 301 and moved.headers["Location"] == "../chan"


# -- packages -----------------------------------------------------------------------------------


def _repodata(names: dict[str, list[str]]) -> bytes:
    packages = {
        f"{name}-{version}-0.conda": {"name": name, "version": version, "build": "0", "size": 1}
        for name, versions in names.items()
        for version in versions
    }
    return orjson.dumps({"info": {}, "packages": {}, "packages.conda": packages})


def test_packages_are_searched_and_paged_newest_first(tmp_path: Path) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text("version: 1\nchannels:\n  - {name: big, path: ./big, subdirs: [linux-64]}\n")
    channel = load_config(config).config.channels[0]
    store = LocalStore(tmp_path / "big")
    names = {f"lib{i:03d}": ["1.0"] for i in range(440)}
    names["zlib"] = ["1.9", "1.10", "1.2.13"]  # conda's order, not the strings'
    store.write("linux-64/repodata.json", _repodata(names))
    store.write("noarch/repodata.json", _repodata({"tool": ["2.0"]}))
    listings = PackageListings()

    first = packages_page(listings, channel)
    assert (first.total, first.matched, first.pages, len(first.rows)) == (444, 444, 3, 200)
    assert first.rows[0].name == "lib000" and first.locations == ["linux-64", "noarch"]
    last = packages_page(listings, channel, page=99)  # past the end: the last page
    assert last.page == 3 and len(last.rows) == 44 and last.rows[-1].name == "zlib"
    assert [r.version for r in last.rows[-3:]] == ["1.10", "1.9", "1.2.13"]

    glob = packages_page(listings, channel, query="LIB1*")  # case-insensitive glob
    assert glob.matched == 100 and {r.name[:4] for r in glob.rows} == {"lib1"}
    substring = packages_page(listings, channel, query="b43")
    assert [r.name for r in substring.rows] == [f"lib43{i}" for i in range(10)]
    noarch = packages_page(listings, channel, location="noarch")
    assert [r.filename for r in noarch.rows] == ["tool-2.0-0.conda"] and noarch.total == 1
    unknown = packages_page(listings, channel, location="../etc")  # not a location: all
    assert unknown.location == "" and unknown.total == 444

    # A publish is seen by the next request; an unchanged index is not parsed again.
    cached = listings.rows(channel, store, "noarch")
    assert listings.rows(channel, store, "noarch")[0] is cached[0]
    time.sleep(0.01)
    store.write("noarch/repodata.json", _repodata({"tool": ["2.0", "3.0"]}))
    assert [r.version for r in packages_page(listings, channel, location="noarch").rows] == [
        "3.0",
        "2.0",
    ]


def test_the_search_form_and_pager_link_relatively(tmp_path: Path) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text("version: 1\nchannels:\n  - {name: big, path: ./big, subdirs: [linux-64]}\n")
    loaded = load_config(config)
    LocalStore(tmp_path / "big").write(
        "linux-64/repodata.json", _repodata({f"p{i}": ["1"] for i in range(450)})
    )
    page = _respond(loaded, "channel/big?q=p&page=2").body.decode()
    assert '<form class="search" method="get" action="">' in page
    assert 'name="q" value="p"' in page
    assert '<a href="?q=p&amp;page=1" rel="prev">' in page
    assert '<a href="?q=p&amp;page=3" rel="next">' in page
    assert "page 2 of 3" in page and "showing 201 to 400" in page


# -- the timeline -------------------------------------------------------------------------------


def _run(started: datetime, minutes: float, state: str = "completed") -> dict[str, Any]:
    stamp = started.isoformat().replace("+00:00", "Z")
    finished = (started + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    return {
        "run_id": f"r{int(started.timestamp())}",
        "target": "chan",
        "state": state,
        "started": stamp,
        "finished": finished,
        "duration_s": minutes * 60,
    }


def _bars(svg: str) -> list[tuple[float, float]]:
    return [
        (float(x), float(w))
        for x, w in re.findall(r'<rect x="([\d.]+)" y="6" width="([\d.]+)"', svg)
    ]


def test_the_timeline_spans_the_runs_shown() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    # Minutes apart: an hour's scale, each run in its own place (not one pixel column).
    close = [_run(now - timedelta(minutes=m), 2) for m in (40, 30, 20, 10)]
    left, span = timeline_scale(close, now)
    assert span == pytest.approx(3600 * 1.04) and left < now - timedelta(minutes=40)
    svg = timeline(close, now, root="", channel="chan")
    xs = sorted(x for x, _ in _bars(svg))
    assert len(xs) == 4 and min(b - a for a, b in itertools.pairwise(xs)) > 100
    assert all(w > 20 for _, w in _bars(svg))  # two minutes of an hour: visible
    labels = re.findall(r'text-anchor="middle">([^<]+)<', svg)
    assert "11:15" in labels and "11:45" in labels and labels == sorted(labels)
    assert 'href="-/run/chan/r' in svg  # every bar links to its run

    # Days apart: a scale of days, labelled with dates and times.
    spread = [_run(now - timedelta(days=d), 5) for d in (3, 2, 1)]
    left, span = timeline_scale(spread, now)
    assert span == pytest.approx(3 * 86400 * 1.04)
    svg = timeline(spread, now, root="../", channel="chan")
    assert len({round(x) for x, _ in _bars(svg)}) == 3
    assert re.search(r'text-anchor="middle">\d\d-\d\d( \d\d:\d\d)?<', svg)
    assert 'href="../-/run/chan/' in svg

    # Nothing shown yet: still a valid strip.
    assert '<svg class="timeline"' in timeline([], now, root="", channel="chan")


# -- run details --------------------------------------------------------------------------------


def test_run_details_hold_counts_and_a_few_examples() -> None:
    actions = [
        Action(kind="remove", location="linux-64", name=f"f{i}-1-0.conda", source="up",
               reason=Reason.FILTERED, detail="x" * 1000)
        for i in range(30)
    ] + [
        Action(kind="remove", location="noarch", name="gone-1-0.conda", source="up",
               reason=Reason.REMOVED_UPSTREAM),
        Action(kind="add", location="noarch", name="new-1-0.conda", source="up",
               reason=Reason.NEW_UPSTREAM),
        Action(kind="reindex", location="noarch", reason=Reason.INDEX_OUTDATED),
        Action(kind="reindex", location="noarch", reason=Reason.INDEX_MISSING),
    ]  # fmt: skip
    details = run_details(actions, [f"failure {i}" for i in range(25)], links={"channel_run": "c"})
    assert details["locations"] == {
        "linux-64": {"removed": 30},
        "noarch": {"added": 1, "removed": 1, "reindexed": 1},
    }
    assert details["reasons"]["removed"] == {"filtered": 30, "removed-upstream": 1}
    assert details["reasons"]["reindexed"] == {"index-missing": 1, "index-outdated": 1}
    assert details["reasons"]["added"] == {"new-upstream": 1}
    # Examples of what left (which rule, gone upstream), not of what came: counted only.
    assert set(details["examples"]) == {"removed"}
    assert len(details["examples"]["removed"]) == EXAMPLES
    assert len(details["examples"]["removed"][0]["detail"]) == TEXT_LIMIT
    assert len(details["failures"]) == FAILURES and details["failures_total"] == 25
    assert details["channel_run"] == "c"
    assert len(orjson.dumps(details)) < 15_000  # compact: counts, not file lists
    # A run that changed nothing records that it did, in a few bytes.
    assert run_details([], [], links={"mirror_runs": {}}) == {"locations": {}}
    restored = run_details([Action(kind="restore", location="noarch", name="r-1-0.conda",
                                   source="up", reason=Reason.RESTORED)])  # fmt: skip
    assert restored["examples"]["restored"] == [
        {"where": "noarch/r-1-0.conda", "source": "up", "reason": "restored"}
    ]


# -- progress -----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(folder: Path) -> dict[str, Any]:
    data = orjson.loads((folder / layout.PROGRESS).read_bytes())
    assert isinstance(data, dict)
    return data


def test_progress_is_throttled_and_the_last_count_still_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    clock = _Clock()
    recorder = ProgressRecorder(store, "run1", {"up": "run2"}, clock=clock)
    recorder.start("downloading 500 files", 5000, unit="bytes", files=500)
    assert recorder.writes == 2  # the run's start, then the step
    for _ in range(499):  # a burst: no write until the interval has passed
        recorder.advance(10, files=1)
    assert recorder.writes == 2
    assert _progress(tmp_path)["done"] == 0
    clock.now += WRITE_INTERVAL
    recorder.advance(10, files=1)
    assert recorder.writes == 3
    written = _progress(tmp_path)
    assert (written["step"], written["done"], written["total"]) == (STEP_DOWNLOADING, 500, 500)
    assert (written["bytes_done"], written["bytes_total"]) == (5000, 5000)
    assert written["mirrors"] == {"up": "run2"} and written["run_id"] == "run1"
    recorder.finish()  # downloads done: the kinds index, then prune
    assert _progress(tmp_path)["step"] == STEP_INDEXING
    recorder.close("completed")
    final = _progress(tmp_path)
    assert final["state"] == "completed" and final["finished"] and final["step"] == "finished"
    writes = recorder.writes
    recorder.advance(1, files=1)
    assert recorder.writes == writes  # nothing after the end


def test_a_count_deferred_by_the_throttle_is_written_by_a_timer(tmp_path: Path) -> None:
    recorder = ProgressRecorder(LocalStore(tmp_path), "run1", {})
    recorder.start("downloading 3 files", 300, unit="bytes", files=3)
    recorder.advance(100, files=1)
    recorder.advance(100, files=1)  # then the last file takes long: nothing else comes
    deadline = time.monotonic() + 5
    while _progress(tmp_path)["done"] != 2:
        assert time.monotonic() < deadline, _progress(tmp_path)
        time.sleep(0.05)
    recorder.close("failed")
    assert _progress(tmp_path)["state"] == "failed"


def test_progress_shows_only_while_its_run_runs_and_holds_the_lock(tmp_path: Path) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
        "    mirrors: [{name: up, source: ./up}]\n"
    )
    channel = load_config(config).config.channels[0]
    store = LocalStore(tmp_path / "chan")
    history = History(store)
    run = history.transition(history.append(new_run("chan", None)), "running")
    mirror_run = history.transition(history.append(new_run("chan", "up")), "running")
    recorder = ProgressRecorder(store, run.run_id, {"up": mirror_run.run_id})
    recorder.start("downloading 2 files", 20, unit="bytes", files=2)

    # A dead run: its history says running, but no process holds the lock.
    progress, locked = read_progress(store, history.runs())
    assert progress is None and not locked
    status = channel_status(channel, REGISTRY)
    assert status.progress is None and status.mirrors[0].progress is None
    assert status.mirrors[0].last_run is not None and status.mirrors[0].last_run.interrupted

    with store.lock(timeout=0, command="reconcile apply"):
        status = channel_status(channel, REGISTRY)
        assert status.progress is not None and status.progress.step == STEP_DOWNLOADING
        assert status.mirrors[0].progress == status.progress
        assert status.mirrors[0].last_run is not None
        assert not status.mirrors[0].last_run.interrupted
        # The lock is held, but by a run the progress file does not belong to.
        history.transition(run, "completed")
        assert read_progress(store, history.runs())[0] is None
        history.transition(run, "running")
        (tmp_path / "chan" / layout.PROGRESS).write_text("{not json")
        assert read_progress(store, history.runs()) == (None, True)
        (tmp_path / "chan" / layout.PROGRESS).write_bytes(b" " * 100_000 + b"{}")
        assert read_progress(store, history.runs()) == (None, True)


def test_concurrent_requests_parse_a_listing_once() -> None:
    listings = PackageListings()
    calls: list[int] = []

    def load() -> list[Any]:
        calls.append(1)
        time.sleep(0.2)  # a big index
        return []

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(listings._get("k", 1, load)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 4
    listings._get("k", 2, load)  # the file changed: parsed again
    assert len(calls) == 2
