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
import select
import shutil
import signal
import socket
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
POLL = 0.2  # seconds between the supervisor's looks at ended workers
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def runtime_folder() -> Path:
    """A private folder for the workers' shared files (removed when the server stops)."""
    return Path(tempfile.mkdtemp(prefix="reconcile-serve-"))


class Port:
    """The address the workers answer on.

    Where the system has ``SO_REUSEPORT`` (Linux, the BSDs), each worker listens on a
    socket of its own and the kernel spreads new connections evenly between them: on
    one shared socket, the worker that wakes first accepts a whole burst of connections
    (keep-alive clients then stay with it) while the others idle. The supervisor only
    holds the port (bound, not listening, so it is never handed a connection).
    Elsewhere the workers share one listening socket.
    """

    def __init__(self, address: tuple[str, int], backlog: int) -> None:
        host, _ = address
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.backlog = backlog
        self.reuse_port = hasattr(socket, "SO_REUSEPORT")
        if self.reuse_port:
            self._held = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                self._held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                self._held.bind(address)
            except OSError:
                self._held.close()
                raise
        else:
            self._held = socket.create_server(address, family=self.family, backlog=backlog)
            self._held.set_inheritable(True)
        self.address: tuple[str, int] = self._held.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def listening(self) -> socket.socket:
        """The listening socket of one worker (call it in the worker)."""
        if not self.reuse_port:
            return self._held
        return socket.create_server(
            self.address, family=self.family, backlog=self.backlog, reuse_port=True
        )

    def close(self) -> None:
        self._held.close()


class Supervisor:
    """Fork ``count`` processes running ``work(index, ready)``, keep them running until
    stopped. ``ready()``, called by a worker once it accepts connections, tells the
    supervisor; ``announce()`` runs once every first worker is ready."""

    def __init__(
        self,
        count: int,
        work: Callable[[int, Callable[[], None]], None],
        runtime: Path,
        announce: Callable[[], None],
    ) -> None:
        self.count = count
        self.work = work
        self.runtime = runtime
        self.announce = announce
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.stopping = False
        self._ready_read, self._ready_write = os.pipe()

    def _ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._ready_write, b"!")

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                os.close(self._ready_read)
                for signum in _FORWARDED:
                    signal.signal(signum, signal.SIG_DFL)
                # A reload asked for while this process starts waits until its server
                # listens for it (the server unblocks SIGHUP then), instead of killing it.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
                self.work(index, self._ready)
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
        ready = 0
        try:
            for index in range(self.count):
                self._start(index)
            # One thread only (a thread in the supervisor would make every later fork
            # risky): wait for readiness and for ended workers in turns.
            while self.children:
                if select.select([self._ready_read], [], [], POLL)[0]:
                    ready += len(os.read(self._ready_read, 64))
                    if ready >= self.count:
                        self.announce()
                        ready = -(1 << 30)  # announced: later workers are replacements
                self._reap()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._ready_read)
            os.close(self._ready_write)
            shutil.rmtree(self.runtime, ignore_errors=True)

    def _reap(self) -> None:
        """Note the workers that ended; start others in their place unless stopping."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None or self.stopping:
                continue
            index, started = entry
            how = (
                f"exit code {os.waitstatus_to_exitcode(status)}"
                if os.WIFEXITED(status)
                else f"signal {os.WTERMSIG(status)}"
            )
            log.error("server process %d (pid %d) ended (%s): starting another", index, pid,
                      how)  # fmt: skip
            if time.monotonic() - started < QUICK_DEATH:
                time.sleep(RESTART_PAUSE)
            if not self.stopping:
                self._start(index)
