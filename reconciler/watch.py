"""``reconcile watch``: apply on config changes, re-index dropped packages, run due mirrors.

File events (watchdog) are collected until the folder has been quiet for the
debounce interval, so a burst of 500 files is one re-index. A package file is
only picked up once its size has stopped changing (a copy still being written
is waited for). An invalid configuration is logged with its errors and the
previous one stays in force. Every ``tick`` seconds the configuration is
applied, so mirrors run when their schedules fall due. One line is logged per
action; SIGTERM and SIGINT stop it between actions.

A channel in a bucket (``s3://``) has no file events: for it the watcher follows
the configuration and the schedules only (packages uploaded to the bucket by hand
are indexed by the next tick's apply).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.conda.names import package_suffix
from reconciler.config.models import LoadedConfig, load_config
from reconciler.errors import ReconcileError

log = logging.getLogger(__name__)


class _Events(FileSystemEventHandler):
    def __init__(self, sink: queue.Queue[str]) -> None:
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for attribute in ("src_path", "dest_path"):
            path = getattr(event, attribute, None)
            if path:
                self.sink.put(path if isinstance(path, str) else path.decode())


class Watcher:
    def __init__(
        self,
        config_path: Path,
        *,
        debounce: float = 2.0,
        settle: float = 1.0,
        tick: float = 60.0,
    ) -> None:
        self.config_path = config_path.resolve()
        self.debounce = debounce
        self.settle = settle
        self.tick = tick
        self.loaded: LoadedConfig = load_config(self.config_path)
        self.events: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()
        self.actions: list[str] = []  # what was done, one line each (also logged)

    # -- actions -------------------------------------------------------------------------

    def _note(self, line: str) -> None:
        self.actions.append(line)
        log.info("%s", line)

    def apply(self, channels: Iterable[str] | None = None, why: str = "") -> None:
        from reconciler.engine.apply import apply
        from reconciler.engine.planner import default_cache_dir
        from reconciler.kinds import REGISTRY

        names = sorted(channels) if channels is not None else None
        try:
            _, report = apply(self.loaded, REGISTRY, channels=names, cache_dir=default_cache_dir())
        except ReconcileError as exc:
            self._note(f"apply failed ({why}): {exc.message}")
            return
        target = ", ".join(names) if names else "all channels"
        self._note(f"applied {target} ({why}): {report.summary()}")

    def reload(self) -> bool:
        try:
            loaded = load_config(self.config_path)
        except ReconcileError as exc:
            self._note(f"configuration not applied, keeping the previous one: {exc.message}")
            return False
        self.loaded = loaded
        self._note(f"configuration reloaded from {self.config_path}")
        return True

    # -- events --------------------------------------------------------------------------

    def _channel_of(self, path: Path) -> str | None:
        for channel in self.loaded.config.channels:
            if not isinstance(channel.path, Path):
                continue  # in a bucket: no file events
            root = channel.path.resolve()
            try:
                relative = path.resolve().relative_to(root)
            except ValueError:
                continue
            parts = relative.parts
            if len(parts) == 2 and not parts[1].startswith(".") and package_suffix(parts[1]):
                return channel.name
        return None

    def _drain(self, first_wait: float) -> set[Path]:
        """Collect paths until the events stop for the debounce interval."""
        paths: set[Path] = set()
        try:
            paths.add(Path(self.events.get(timeout=first_wait)))
        except queue.Empty:
            return paths
        while not self.stopping.is_set():
            try:
                paths.add(Path(self.events.get(timeout=self.debounce)))
            except queue.Empty:
                break
        return paths

    def _wait_until_settled(self, paths: Iterable[Path]) -> None:
        """Wait while any of the files is still growing (being copied in)."""
        pending = {p for p in paths if p.exists()}
        sizes = {p: p.stat().st_size for p in pending}
        while pending and not self.stopping.is_set():
            time.sleep(self.settle)
            for path in list(pending):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    pending.discard(path)
                    continue
                if size == sizes[path]:
                    pending.discard(path)
                sizes[path] = size

    def handle(self, paths: set[Path]) -> None:
        if self.config_path in {p.resolve() for p in paths if p.exists()} or any(
            p.name == self.config_path.name and p.parent.resolve() == self.config_path.parent
            for p in paths
        ):
            if self.reload():
                self.apply(why="configuration changed")
            return
        touched = {p for p in paths if self._channel_of(p)}
        if not touched:
            return
        self._wait_until_settled(touched)
        channels = {c for c in (self._channel_of(p) for p in touched) if c}
        self._note(f"{len(touched)} package file(s) changed in {', '.join(sorted(channels))}")
        self.apply(channels, why="packages changed")

    # -- loop ----------------------------------------------------------------------------

    def _observe(self) -> Any:
        observer = Observer()
        handler = _Events(self.events)
        observer.schedule(handler, str(self.config_path.parent), recursive=False)
        for channel in self.loaded.config.channels:
            if not isinstance(channel.path, Path):
                continue  # in a bucket: schedules and configuration only
            root = channel.path
            root.mkdir(parents=True, exist_ok=True)
            observer.schedule(handler, str(root), recursive=True)
        observer.start()
        return observer

    def run(self, *, once: bool = False, wait: float | None = None) -> None:
        """Watch until stopped; ``once``: handle the first burst of events (or none) and return."""
        observer = self._observe()
        try:
            if not once:
                self.apply(why="start")
            next_tick = time.monotonic() + self.tick
            while not self.stopping.is_set():
                timeout = (
                    wait if once and wait is not None else max(0.1, next_tick - time.monotonic())
                )
                paths = self._drain(min(timeout, 1.0) if not once else timeout)
                if paths:
                    self.handle(paths)
                if once:
                    return
                if time.monotonic() >= next_tick:
                    self.apply(why="scheduled tick")
                    next_tick = time.monotonic() + self.tick
        finally:
            observer.stop()
            observer.join()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            log.info("stopping (signal %d)", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
