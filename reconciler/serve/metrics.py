"""``GET /metrics``: Prometheus text format (prometheus-client), one registry per server.

Counted as requests are answered: requests by channel, kind and status code, bytes
sent, passive fetches, hits, failures, refusals from the negative cache and the
upstream latency of fetches. Read from each channel's history and inventory when
scraped, as the status page reads them: per mirror the time of the last
successful run, the last run's state and the packages it has in the channel.

Label values are configured names only (channel, mirror, kind, status code): a
request for an unknown channel counts under ``channel=""``, so clients cannot
grow the series without bound, and no token or path ever becomes a label.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.config.models import Channel, LoadedConfig
from reconciler.engine import layout
from reconciler.engine.history import History
from reconciler.engine.state import ChannelState, read_state
from reconciler.kinds import REGISTRY
from reconciler.serve.shared import Shared
from reconciler.store import channel_store
from reconciler.store.base import Store

RUN_STATES = ("pending", "running", "completed", "failed", "skipped")
# A channel in a bucket is read again at most this often (each read is requests).
BUCKET_TTL = 15.0
KINDS = ("conda", "pypi", "status", "metrics", "other")


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _MirrorCollector(Collector):
    """Mirror and channel figures, read from disk at scrape time (cached by mtime)."""

    def __init__(self, loaded: Callable[[], LoadedConfig]) -> None:
        self._loaded = loaded
        self._cache: dict[str, tuple[tuple[int, int], Any]] = {}

    def _cached(self, store: Store, key: str, read: Callable[[], Any], slot: str = "") -> Any:
        """``read()``, again only when the file ``key`` changed (on disk: its size and
        mtime), or at most every BUCKET_TTL seconds for a channel in a bucket. ``slot``
        keeps apart several figures that follow one file."""
        path = store.local_path(key)
        if path is not None:
            try:
                st = os.stat(path)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = (0, 0)
        else:
            stamp = (-1, int(time.monotonic() // BUCKET_TTL))
        where = store.describe(key) + slot
        hit = self._cache.get(where)
        if hit is None or hit[0] != stamp:
            hit = (stamp, read())
            self._cache[where] = hit
        return hit[1]

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "reconcile_mirror_last_success_timestamp_seconds",
            "When the mirror's last completed run finished (Unix time)",
            labels=["channel", "mirror"],
        )
        last_run = GaugeMetricFamily(
            "reconcile_mirror_last_run_timestamp_seconds",
            "When the mirror's last run started (Unix time)",
            labels=["channel", "mirror"],
        )
        state = GaugeMetricFamily(
            "reconcile_mirror_last_run_state",
            "1 for the state of the mirror's last run, 0 for the others",
            labels=["channel", "mirror", "state"],
        )
        packages = GaugeMetricFamily(
            "reconcile_mirror_packages",
            "Files the mirror has in the channel's inventory",
            labels=["channel", "mirror"],
        )
        published = GaugeMetricFamily(
            "reconcile_channel_packages",
            "Packages the channel's published index lists, by subdir",
            labels=["channel", "subdir"],
        )
        info = GaugeMetricFamily(
            "reconcile_channel_info",
            "One per served channel, with its kind and access",
            labels=["channel", "kind", "access"],
        )
        for channel in self._loaded().config.channels:
            kind = "conda" if isinstance(channel, Channel) else "pypi"
            info.add_metric([channel.name, kind, channel.access], 1)
            store = channel_store(channel)
            runs = self._cached(store, layout.HISTORY, History(store).runs)
            inventory: ChannelState = self._cached(
                store, layout.STATE, functools.partial(read_state, store, channel.name)
            )
            by_source: dict[str, int] = {}
            for entry in inventory.files.values():
                by_source[entry.source] = by_source.get(entry.source, 0) + 1
            # What the index lists changes with the state (every apply that publishes):
            # read again then, not on every scrape.
            counts: dict[str, int | None] = self._cached(
                store,
                layout.STATE,
                functools.partial(REGISTRY.kind_of(channel).counts, channel, store),
                slot="#counts",
            )
            for subdir, count in counts.items():
                if count is not None:
                    published.add_metric([channel.name, subdir], count)
            for mirror in channel.mirrors:
                labels = [channel.name, mirror.name]
                mine = [r for r in runs if r.mirror == mirror.name]
                packages.add_metric(labels, by_source.get(mirror.name, 0))
                done = [r for r in mine if r.state == "completed"]
                finished = _timestamp(done[-1].finished or done[-1].started) if done else None
                if finished is not None:
                    success.add_metric(labels, finished)
                if mine:
                    last = mine[-1]
                    started = _timestamp(last.started)
                    if started is not None:
                        last_run.add_metric(labels, started)
                    for name in RUN_STATES:
                        state.add_metric([*labels, name], 1.0 if last.state == name else 0.0)
        yield from (success, last_run, state, packages, published, info)


class _Counted(Collector):
    """The counted metrics of the only process of the server, as they are."""

    def __init__(self, counted: CollectorRegistry) -> None:
        self._counted = counted

    def collect(self) -> Iterator[Metric]:
        yield from self._counted.collect()


class _ServedCollector(Collector):
    """Requests and bytes by channel, kind and code, as counters, from plain numbers."""

    def __init__(self, served: dict[tuple[str, str, int], list[float]]) -> None:
        self._served = served

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "reconcile_serve_requests",
            "Requests answered, by channel, kind and status code",
            labels=["channel", "kind", "code"],
        )
        sent = CounterMetricFamily(
            "reconcile_serve_response_bytes",
            "Body bytes sent, by channel and kind",
            labels=["channel", "kind"],
        )
        by_kind: dict[tuple[str, str], list[float]] = {}
        # A copy: the event loop goes on counting while this runs in a worker thread.
        for (channel, kind, code), (count, size, created) in sorted(dict(self._served).items()):
            requests.add_metric([channel, kind, str(code)], count, created=created)
            total = by_kind.setdefault((channel, kind), [0, created])
            total[0] += size
            total[1] = min(total[1], created)
        for (channel, kind), (size, created) in by_kind.items():
            sent.add_metric([channel, kind], size, created=created)
        yield from (requests, sent)


class _Merged(Collector):
    """What this process counted, added to what the server's other processes counted."""

    def __init__(self, counted: CollectorRegistry, shared: Shared) -> None:
        self._counted = counted
        self._shared = shared

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        own = dump_families(self._counted)
        # Published before it is shown: a later scrape answered by another process then
        # adds at least these counts, so no counter is ever seen going down.
        self._shared.publish_metrics(own)
        for dump in [own, *self._shared.other_metrics()]:
            for entry in dump:
                with contextlib.suppress(ValueError, TypeError):  # a foreign file
                    name, kind, documentation, samples = entry
                    if name not in families:
                        families[name] = Metric(str(name), str(documentation), str(kind))
                    for sample, labels, value in samples:
                        key = (str(name), str(sample), tuple(sorted(labels.items())))
                        seen = totals.get(key)
                        if seen is None:
                            totals[key] = float(value)
                        elif str(sample).endswith("_created"):  # the first start counts
                            totals[key] = min(seen, float(value))
                        else:
                            totals[key] = seen + float(value)
        for (name, sample, labels), value in totals.items():
            families[name].add_sample(sample, dict(labels), value)
        yield from families.values()


def dump_families(registry: CollectorRegistry) -> list[Any]:
    """The registry's samples as plain JSON data: [name, type, help, samples] per family."""
    return [
        [
            family.name,
            family.type,
            family.documentation,
            [[s.name, s.labels, s.value] for s in family.samples],
        ]
        for family in registry.collect()
    ]


class ServeMetrics:
    """The server's metrics; also the passive fetcher's observer.

    With several server processes (``shared``), each publishes what it counted and a
    scrape adds them up; the figures read from disk are read once.
    """

    def __init__(self, loaded: Callable[[], LoadedConfig], shared: Shared | None = None) -> None:
        self.shared = shared
        # What is counted as requests are answered; the registry scraped adds the rest.
        self.counted = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=True)
        self.fetches = Counter(
            "reconcile_serve_passive_fetches",
            "Passive files fetched from upstream",
            ["channel"],
            registry=self.counted,
        )
        self.fetched_bytes = Counter(
            "reconcile_serve_passive_fetched_bytes",
            "Bytes of passive files fetched from upstream",
            ["channel"],
            registry=self.counted,
        )
        self.passive_hits = Counter(
            "reconcile_serve_passive_hits",
            "Requests that waited on another request's fetch and got its file",
            ["channel"],
            registry=self.counted,
        )
        self.failures = Counter(
            "reconcile_serve_passive_failures",
            "Passive fetches that failed (the upstream, or our disk)",
            ["channel"],
            registry=self.counted,
        )
        self.negative_hits = Counter(
            "reconcile_serve_passive_negative_cache_hits",
            "Requests answered 502 from the negative cache, without asking the upstream",
            ["channel"],
            registry=self.counted,
        )
        self.latency = Histogram(
            "reconcile_serve_upstream_fetch_seconds",
            "Time to fetch and verify a passive file from upstream",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.counted,
        )
        self.registry.register(_MirrorCollector(loaded))
        # (channel, kind, code) -> [requests, bytes, created]: plain numbers, counted on
        # the event loop (one thread) and turned into counters when scraped.
        self._served: dict[tuple[str, str, int], list[float]] = {}
        self.counted.register(_ServedCollector(self._served))
        self.registry.register(
            _Merged(self.counted, shared) if shared is not None else _Counted(self.counted)
        )

    def publish(self) -> None:
        """Let the server's other processes see what this one counted."""
        if self.shared is not None:
            self.shared.publish_metrics(dump_families(self.counted))

    def request(self, channel: str, kind: str, code: int, size: int) -> None:
        """Count one answered request (on the event loop: no lock, no label look-up)."""
        counts = self._served.get((channel, kind, code))
        if counts is None:
            counts = self._served[(channel, kind, code)] = [0, 0, time.time()]
        counts[0] += 1
        counts[1] += size

    # FetchObserver
    def fetched(self, channel: str, seconds: float, size: int) -> None:
        self.fetches.labels(channel).inc()
        self.fetched_bytes.labels(channel).inc(size)
        self.latency.labels(channel).observe(seconds)

    def failed(self, channel: str, seconds: float) -> None:
        self.failures.labels(channel).inc()
        self.latency.labels(channel).observe(seconds)

    def hits(self, channel: str, count: int) -> None:
        self.passive_hits.labels(channel).inc(count)

    def refused(self, channel: str) -> None:
        self.negative_hits.labels(channel).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
