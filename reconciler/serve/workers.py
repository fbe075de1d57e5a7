"""Several server processes answering on one listening socket.

One Python process answers a few thousand file requests a second; a machine with
more cores serves more with more processes. The supervisor binds the socket, forks
``workers`` server processes that all accept on it (the kernel hands each new
connection to one of them), forwards SIGTERM, SIGINT and SIGHUP to them, and starts
a new process in place of one that died. What the processes must agree on lives in
a folder they share (:class:`~reconciler.serve.shared.Shared`): the metrics each has
counted, failed passive fetches, and one lock per passive file so that it is fetched
once however many processes are asked for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

# A worker that dies this soon after starting is restarted after a pause, not at once:
# a configuration that crashes every worker must not become a fork loop.
QUICK_DEATH = 5.0
RESTART_PAUSE = 1.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def runtime_folder() -> Path:
    """A private folder for the workers' shared files (removed when the server stops)."""
    return Path(tempfile.mkdtemp(prefix="reconcile-serve-"))


class Supervisor:
    """Fork ``count`` processes running ``work(index)``, keep them running until stopped."""

    def __init__(self, count: int, work: Callable[[int], None], runtime: Path) -> None:
        self.count = count
        self.work = work
        self.runtime = runtime
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.stopping = False

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                for signum in _FORWARDED:
                    signal.signal(signum, signal.SIG_DFL)
                # A reload asked for while this process starts waits until its server
                # listens for it (the server unblocks SIGHUP then), instead of killing it.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
                self.work(index)
            except BaseException:  # a worker reports whatever ended it, and exits
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = (index, time.monotonic())

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> None:
        previous = {signum: signal.signal(signum, self._forward) for signum in _FORWARDED}
        try:
            for index in range(self.count):
                self._start(index)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                entry = self.children.pop(pid, None)
                if entry is None or self.stopping:
                    continue
                index, started = entry
                how = (
                    f"exit code {os.waitstatus_to_exitcode(status)}"
                    if os.WIFEXITED(status)
                    else f"signal {os.WTERMSIG(status)}"
                )
                log.error("server process %d (pid %d) ended (%s): starting another", index,
                          pid, how)  # fmt: skip
                if time.monotonic() - started < QUICK_DEATH:
                    time.sleep(RESTART_PAUSE)
                if not self.stopping:
                    self._start(index)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.runtime, ignore_errors=True)
