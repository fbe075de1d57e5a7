"""One lock per channel, so two applies (or an apply and a watcher) never overlap.

The lock is an ``flock`` on ``<channel>/.reconciler/lock``: the kernel releases it
when the holder exits, however it dies, so a lock left by a dead process is free
to take without guessing from pids. The file also records who holds it (pid,
host, command, start time) so a waiting or refused run can say whom it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from reconciler.errors import ReconcileError

LOCK_NAME = ".reconciler/lock"


class LockTimeout(ReconcileError):
    """The channel stayed locked by another run for longer than we were willing to wait."""

    def __init__(self, channel: Path, holder: LockHolder | None, waited: float) -> None:
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"channel {channel} is locked by {who}; gave up after {waited:.0f} s",
            hint="wait for that run to finish, or raise --lock-timeout",
        )
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    command: str
    started: str  # ISO 8601, UTC

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command}) since {self.started}"

    @classmethod
    def current(cls, command: str) -> LockHolder:
        started = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        return cls(os.getpid(), socket.gethostname(), command, started)

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(
                int(data["pid"]), str(data["host"]), str(data["command"]), str(data["started"])
            )
        except (ValueError, KeyError, TypeError):
            return None


def read_holder(channel: Path) -> LockHolder | None:
    """Who holds the channel's lock right now, or None when it is free."""
    path = channel / LOCK_NAME
    try:
        with path.open("r+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return LockHolder.parse(handle.read())
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def channel_lock(
    channel: Path, *, timeout: float = 0.0, command: str | None = None, poll: float = 0.2
) -> Iterator[LockHolder]:
    """Hold the channel's lock for the ``with`` block, waiting up to ``timeout`` seconds."""
    path = channel / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = LockHolder.current(command or " ".join(["reconcile", *sys.argv[1:2]]))
    handle: IO[str] = path.open("a+", encoding="utf-8")
    try:
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise LockTimeout(
                        channel, LockHolder.parse(handle.read()), time.monotonic() - started
                    ) from None
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        # Who holds the lock is for messages only: a full disk must not stop the run.
        with contextlib.suppress(OSError):
            os.write(handle.fileno(), json.dumps(me.__dict__).encode())
        try:
            yield me
        finally:
            # Empty the record before releasing, so a reader never names a gone holder.
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
