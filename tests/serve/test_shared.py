"""The folder the processes of one server share: locks, failed fetches, metrics."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from reconciler.serve.metrics import _Merged, dump_families
from reconciler.serve.shared import Shared


def test_a_lock_is_held_by_one_holder_at_a_time(tmp_path: Path) -> None:
    shared = Shared(tmp_path, 0)
    events: list[str] = []
    inside = threading.Event()

    def other() -> None:
        with shared.lock("fetch", "chan", "linux-64/a-1-0.conda"):
            events.append("other in")

    with shared.lock("fetch", "chan", "linux-64/a-1-0.conda"):
        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(0.3)  # the other holder is kept out meanwhile
        events.append("first out")
    thread.join(timeout=10)
    assert events == ["first out", "other in"]
    with shared.lock("fetch", "chan", "another"), shared.lock("stats", "chan"):
        pass  # distinct names do not wait on each other


def test_a_failure_seen_by_one_process_is_seen_by_the_others(tmp_path: Path) -> None:
    one, two = Shared(tmp_path, 0), Shared(tmp_path, 1)
    one.record_failure("chan", "linux-64/a-1-0.conda", "2026-01-01T00:00:00+00:00", "HTTP 500")
    seen = two.failure("chan", "linux-64/a-1-0.conda")
    assert seen is not None
    age, wall, message = seen
    assert 0 <= age < 5 and wall.startswith("2026-01-01") and message == "HTTP 500"
    assert two.failure("chan", "linux-64/b-1-0.conda") is None
    assert two.failure("other", "linux-64/a-1-0.conda") is None
    two.forget_failure("chan", "linux-64/a-1-0.conda")
    assert one.failure("chan", "linux-64/a-1-0.conda") is None


def test_torn_or_foreign_files_are_ignored(tmp_path: Path) -> None:
    shared = Shared(tmp_path, 0)
    shared.record_failure("chan", "k", "then", "boom")
    (path,) = (tmp_path / "failures").iterdir()
    for junk in (b"", b"{", b"[]", b'{"channel": "chan"}', b'{"channel":"chan","key":"k","at":"x"'):
        path.write_bytes(junk)
        assert shared.failure("chan", "k") is None
    path.write_bytes(b'{"channel":"chan","key":"k","at":%d,"wall":"w","error":"e"}' % 1e12)
    assert shared.failure("chan", "k") is None  # from the future: not believed
    for junk in (b"", b"{}", b"[1, 2]", b'[["x", "counter", "h", [["x_total", {}, "NaN?"]]]]'):
        (tmp_path / "metrics" / "999999.json").write_bytes(junk)
        merged = _Merged(CollectorRegistry(), shared)
        list(merged.collect())  # no error, whatever the file holds


def _counted() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    fetches = Counter("fetches", "Fetches", ["channel"], registry=registry)
    latency = Histogram("latency", "Latency", ["channel"], buckets=(1, 5), registry=registry)
    return registry, fetches, latency


def test_metrics_of_all_processes_are_added_up(tmp_path: Path) -> None:
    mine = Shared(tmp_path, 0)
    registry, fetches, latency = _counted()
    fetches.labels("chan").inc(3)
    latency.labels("chan").observe(0.5)
    time.sleep(0.01)
    theirs, their_fetches, their_latency = _counted()
    their_fetches.labels("chan").inc(4)
    their_fetches.labels("b").inc(1)
    their_latency.labels("chan").observe(3)
    # The other process's file, as it would have written it (named by its pid).
    other_pid = os.getpid() + 1
    data = dump_families(theirs)
    (tmp_path / "metrics" / f"{other_pid}.json").write_bytes(orjson.dumps(data))
    merged = CollectorRegistry()
    merged.register(_Merged(registry, mine))
    generate_latest(merged)  # publishes mine: the next scrape must not count it twice
    assert len(list((tmp_path / "metrics").glob("*.json"))) == 2
    text = generate_latest(merged).decode()
    assert 'fetches_total{channel="chan"} 7.0' in text
    assert 'fetches_total{channel="b"} 1.0' in text
    assert 'latency_bucket{channel="chan",le="1.0"} 1.0' in text
    assert 'latency_bucket{channel="chan",le="5.0"} 2.0' in text
    assert 'latency_count{channel="chan"} 2.0' in text
    assert 'latency_sum{channel="chan"} 3.5' in text
    created = [
        line for line in text.splitlines() if line.startswith('fetches_created{channel="chan"}')
    ]
    mine_created = float(
        next(s.value for f in registry.collect() for s in f.samples if s.name == "fetches_created")
    )
    assert [float(line.split()[-1]) for line in created] == [mine_created]  # the earliest
