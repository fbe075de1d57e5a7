"""Progress reporting: a no-op reporter for tests and pipes, a bar on a terminal, and a
recorder that keeps the step an apply run is on in the channel, for the status views.

A reporter is told when a step starts (its label, its total and unit), how far it got,
and when it finished. The download executor also says how many files it fetches
(``files=`` on :meth:`Reporter.start`, one ``files=1`` per file done), so a step can
read "downloading 3/10 files" as well as count bytes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from reconciler.engine import layout
from reconciler.engine.clock import timestamp
from reconciler.errors import ReconcileError
from reconciler.faults import checkpoint_armed
from reconciler.store.base import Store

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def start(
        self, label: str, total: int, *, unit: str = "files", files: int | None = None
    ) -> None: ...
    def advance(self, count: int, *, files: int = 0) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(
        self, label: str, total: int, *, unit: str = "files", files: int | None = None
    ) -> None:
        pass

    def advance(self, count: int, *, files: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalReporter:
    """A rich progress bar on stderr; only worth it when stderr is a terminal."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def start(
        self, label: str, total: int, *, unit: str = "files", files: int | None = None
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        # Bytes get size and rate columns; files get "n/total".
        counts = (
            (DownloadColumn(), TransferSpeedColumn())
            if unit == "bytes"
            else (MofNCompleteColumn(),)
        )
        # stdout carries the product; progress belongs on stderr.
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *counts,
            TimeRemainingColumn(),
            transient=True,
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, count: int, *, files: int = 0) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._task = None


def default_reporter() -> Reporter:
    if sys.stderr.isatty():
        return TerminalReporter()
    return NullReporter()


# -- the progress of an apply run, kept in the channel -----------------------------------

PROGRESS_VERSION = 1
# Counts are written at most this often; a change of step is written when it happens
# (a handful per run), so the file changes a few times a second at most.
WRITE_INTERVAL = 0.5
PROGRESS_LIMIT = 64 * 1024  # a bigger progress.json is not ours: readers ignore it

STEP_PREPARING = "preparing"  # keeping upstream metadata, unpublishing re-uploads
STEP_DOWNLOADING = "downloading"
STEP_INDEXING = "indexing and pruning"  # publishing the index, then deleting what left it
STEP_RECORDING = "recording"  # state, history
STEP_FINISHED = "finished"


class ProgressRecorder:
    """A :class:`Reporter` that also keeps where one run is in ``.reconciler/progress.json``.

    The engine creates it for a channel's run under the channel's lock, sets the phases
    it knows (:meth:`phase`), and hands it to the kind's ``execute``: the steps a kind
    reports (``reporter.start(label, ...)``) show under their label, the download
    executor's as "downloading n/N files" with bytes. Every call is passed on to
    ``inner`` (the terminal's bar).

    A change of step is written at once; counts at most every :data:`WRITE_INTERVAL`
    seconds, the last of them by a timer when nothing else comes (a download stuck on a
    big file still shows the files done before it). Writing is best effort: it never
    fails the run (a full disk fails the run where the run writes, not here). With the
    crash hooks armed (tests), only changes of step are written, so the writes of a run
    do not depend on timing.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        mirrors: Mapping[str, str],
        *,
        inner: Reporter | None = None,
        phase: str = STEP_PREPARING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.inner: Reporter = inner or NullReporter()
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = phase
        self._last_write: float | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        self.writes = 0
        started = timestamp()
        self.data: dict[str, Any] = {
            "progress_version": PROGRESS_VERSION,
            "run_id": run_id,
            "mirrors": dict(sorted(mirrors.items())),
            "state": "running",
            "step": phase,
            "label": phase,
            "done": None,
            "total": None,
            "unit": None,
            "bytes_done": None,
            "bytes_total": None,
            "started": started,
            "updated": started,
            "finished": None,
        }
        self._write(force=True)

    # -- the Reporter protocol -----------------------------------------------------------

    def start(
        self, label: str, total: int, *, unit: str = "files", files: int | None = None
    ) -> None:
        self.inner.start(label, total, unit=unit, files=files)
        with self._lock:
            if files is not None:  # the download executor: files, and bytes
                self._set_step(STEP_DOWNLOADING, label, 0, files, "files")
                if unit == "bytes":
                    self.data.update(bytes_done=0, bytes_total=total)
            else:
                self._set_step(label, label, 0, total, unit)
            self._write(force=True)

    def advance(self, count: int, *, files: int = 0) -> None:
        self.inner.advance(count, files=files)
        with self._lock:
            data = self.data
            if data["bytes_total"] is not None:
                data["bytes_done"] = (data["bytes_done"] or 0) + count
                data["done"] = (data["done"] or 0) + files
            else:
                data["done"] = (data["done"] or 0) + count
            self._write(force=False)

    def finish(self) -> None:
        self.inner.finish()
        with self._lock:
            if self.data["step"] == STEP_DOWNLOADING:
                # Kinds publish the index once their files are in place, then prune.
                self._phase = STEP_INDEXING
            self._set_step(self._phase, self._phase, None, None, None)
            self._write(force=True)

    # -- what the engine says --------------------------------------------------------------

    def phase(self, name: str) -> None:
        """The engine's own step (shown until a kind reports one, and after it finished)."""
        with self._lock:
            self._phase = name
            self._set_step(name, name, None, None, None)
            self._write(force=True)

    def close(self, state: str) -> None:
        """The run ended in ``state``: the file says so, and readers stop showing it."""
        with self._lock:
            self._set_step(STEP_FINISHED, STEP_FINISHED, None, None, None)
            self.data.update(state=state, finished=timestamp())
            self._write(force=True)
            self._closed = True

    def stop(self) -> None:
        """Drop a count not written yet (the run ended, maybe by an error of the tool)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # -- writing -----------------------------------------------------------------------------

    def _set_step(
        self, step: str, label: str, done: int | None, total: int | None, unit: str | None
    ) -> None:
        self.data.update(
            step=step,
            label=label,
            done=done,
            total=total,
            unit=unit,
            bytes_done=None,
            bytes_total=None,
        )

    def _write(self, *, force: bool) -> None:
        """Write the progress (the caller holds ``_lock``), or have a timer write it soon."""
        if self._closed:
            return
        at = self._clock()
        if not force:
            if checkpoint_armed():
                return
            if self._last_write is not None and at - self._last_write < WRITE_INTERVAL:
                if self._timer is None:
                    self._timer = threading.Timer(
                        self._last_write + WRITE_INTERVAL - at, self._flush
                    )
                    self._timer.daemon = True
                    self._timer.start()
                return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.data["updated"] = timestamp()
        body = orjson.dumps(self.data, option=orjson.OPT_SORT_KEYS)
        self._last_write = at
        try:
            self.store.write(layout.PROGRESS, body, durable=False)
            self.writes += 1
        except (ReconcileError, OSError) as exc:
            # Only a view of the run: never its error (the run's own writes report a
            # full disk, naming the file the run needed).
            log.debug("progress not recorded: %s", exc)

    def _flush(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # written meanwhile (the timer was cancelled, or replaced)
            self._timer = None
            self._write(force=True)
