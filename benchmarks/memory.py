"""Peak memory of this process and its children, sampled from /proc.

``ru_maxrss`` of children is misleading here: a forked child (a reader worker, or
the fork behind ``subprocess``) reports the parent's pages as its own. Sampling
the resident size of the whole process tree every few milliseconds gives the
real simultaneous peak (shared pages counted once per process: an upper bound).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(c) for c in text.split())
    except (OSError, ValueError):
        pass
    return found


def tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_kb(current)
        stack.extend(_children(current))
    return total


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.mb``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, tree_rss_kb(os.getpid()))

    @property
    def mb(self) -> float:
        return self.peak_kb / 1024
