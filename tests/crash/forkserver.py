"""A pre-imported `reconcile`: forks one child process per run, so runs skip the imports.

Started as ``python -m tests.crash.forkserver``. It imports the CLI and every module
a run needs, then reads one JSON request per line on stdin (``argv``, ``cwd``,
``env``, ``log``) and forks a child that becomes that run: its own process, with
that environment (``faults.arm()`` reads ``RECONCILE_CRASH_AT`` /
``RECONCILE_CRASH_TRACE`` as an import would), that working directory, stdout and
stderr to ``log``, exiting with ``cli.main``'s code. The server answers the
child's pid at once and its wait status (``-signal`` or the exit code) when it
ends. The server itself never starts a thread, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def _child(request: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    code = 99
    try:
        from reconciler import cli, faults

        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        faults.arm()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = ["reconcile", *request["argv"]]
        code = cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    import reconciler.cli
    import reconciler.commands
    import reconciler.engine.apply
    import reconciler.engine.render
    import reconciler.serve.server  # noqa: F401

    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        out.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


class Forked:
    """A run forked by a :class:`ForkServer`, with the parts of ``Popen`` the harness uses."""

    def __init__(self, server: ForkServer, args: Sequence[str]) -> None:
        self.args = list(args)
        self.returncode: int | None = None
        self._server = server
        reply = json.loads(server.stdout.readline())
        self.pid: int = reply["pid"]
        self._done = threading.Event()
        threading.Thread(target=self._wait_status, daemon=True).start()

    def _wait_status(self) -> None:
        line = self._server.stdout.readline()
        self.returncode = json.loads(line)["status"] if line else -999
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if not self._done.is_set():  # the server reaps the child only after it ended
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One server process; one run at a time (the harness keeps one per worker)."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.forkserver"],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin: IO[str] = self.process.stdin
        self.stdout: IO[str] = self.process.stdout

    def start(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path) -> Forked:
        request = {"argv": list(argv), "cwd": str(cwd), "env": dict(env), "log": str(log)}
        self.stdin.write(json.dumps(request) + "\n")
        self.stdin.flush()
        return Forked(self, argv)

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=30)
        self.stdout.close()


if __name__ == "__main__":
    main()
