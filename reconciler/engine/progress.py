"""Progress reporting: a no-op reporter for tests and pipes, a bar on a terminal."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Reporter(Protocol):
    def start(self, label: str, total: int, *, unit: str = "files") -> None: ...
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, label: str, total: int, *, unit: str = "files") -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalReporter:
    """A rich progress bar on stderr; only worth it when stderr is a terminal."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def start(self, label: str, total: int, *, unit: str = "files") -> None:
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

    def advance(self, count: int) -> None:
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
