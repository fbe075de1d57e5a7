"""Several server processes answering on one port.

One Python process answers a few thousand file requests a second; a machine with
more cores serves more with more processes. The supervisor holds the port, forks
``workers`` server processes that accept on it (the kernel hands each new connection
to one of them), forwards SIGTERM, SIGINT and SIGHUP to them, and starts a new process
in place of one that died once the server is up (one that dies before that stops the
server with an error). Workers end when the supervisor does, however it ends. What
the processes must agree on lives in a folder they share
(:class:`~reconciler.serve.shared.Shared`): the metrics each has counted, failed
passive fetches, and one lock per passive file so that it is fetched once however
many processes are asked for it.
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

from reconciler.errors import ReconcileError

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
            # First a plain bind: it fails on a port any other server holds, which a
            # SO_REUSEPORT bind of the same user would join instead.
            with socket.socket(self.family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                address = (address[0], probe.getsockname()[1])
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


class WorkerFailed(Exception):
    """A worker ended before the server was up: the server cannot start."""


def _die_with_parent(parent: int) -> None:
    """Have the kernel end this process when ``parent`` ends (Linux), so workers never
    outlive a supervisor that was killed; elsewhere, their housekeeping notices."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(0)


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
        self.stopping: int | None = None  # the signal that asked to stop
        self.announced = False
        self._pid = os.getpid()
        self._ready_read, self._ready_write = os.pipe()

    def _ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._ready_write, b"!")

    def _start(self, index: int) -> None:
        if self.stopping is not None:
            return
        # Signals wait while forking: a child must never run the supervisor's handler
        # (it would signal its siblings), and a stop must reach every child registered.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                self._run_worker(index)
            self.children[pid] = (index, time.monotonic())
        finally:
            if os.getpid() == self._pid:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

    def _run_worker(self, index: int) -> None:
        code = 0
        try:
            os.close(self._ready_read)
            for signum in _FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            _die_with_parent(self._pid)
            # A reload asked for while this process starts waits until its server listens
            # for it (the server unblocks SIGHUP then), instead of killing it.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            self.work(index, self._ready)
        except ReconcileError as exc:  # said as a user error, not a traceback
            log.error("%s", exc.message)
            code = 1
        except BaseException:  # a worker reports whatever ended it, and exits
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
            self.stopping = signum
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> None:
        """Until every worker ended after a stop; :class:`WorkerFailed` when one ended
        before the server was up."""
        for signum in _FORWARDED:
            signal.signal(signum, self._forward)
        ready = 0
        try:
            for index in range(self.count):
                self._start(index)
            # One thread only (a thread in the supervisor would make every later fork
            # risky): wait for readiness and for ended workers in turns.
            while self.children:
                if select.select([self._ready_read], [], [], POLL)[0]:
                    ready += len(os.read(self._ready_read, 64))
                    if not self.announced and ready >= self.count:
                        self.announced = True
                        self.announce()
                self._reap()
        finally:
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
            if entry is None or self.stopping is not None:
                continue
            index, started = entry
            how = (
                f"exit code {os.waitstatus_to_exitcode(status)}"
                if os.WIFEXITED(status)
                else f"signal {os.WTERMSIG(status)}"
            )
            if not self.announced:  # it could not start: neither will the next one
                self._forward(signal.SIGTERM, None)
                self._wait_all()
                raise WorkerFailed(f"server process {index} (pid {pid}) ended ({how}) "
                                   "while starting")  # fmt: skip
            log.error("server process %d (pid %d) ended (%s): starting another", index, pid,
                      how)  # fmt: skip
            if time.monotonic() - started < QUICK_DEATH:
                time.sleep(RESTART_PAUSE)
            self._start(index)

    def _wait_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
