"""Kill a real `reconcile` run at every checkpoint, then check the channel and convergence.

Runs are forked from the test process (the modules are already imported, so a
run costs a fraction of a fresh interpreter) and SIGKILL themselves at the
checkpoint named by ``RECONCILE_CRASH_AT`` (see ``reconciler/faults.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from reconciler import cli, faults
from reconciler.engine.history import History
from reconciler.engine.state import STATE_NAME, ChannelState
from reconciler.store.local import TEMP_PREFIX

CLOCK = "2026-06-01T12:00:00+00:00"  # outputs are compared byte for byte: one clock


def fork_run(
    action: Callable[[], int], env: Mapping[str, str], kill_after: float | None = None
) -> int:
    """Run ``action`` in a forked child with ``env``; its exit code, or -signal."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:  # an exception in the child is exit code 99, its traceback in CHILD_ERRORS
            os.environ.setdefault("PYTHONFAULTHANDLER", "1")
            os.environ.update(env)
            os.environ["RECONCILE_NOW"] = CLOCK
            faults.arm()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = action()
        except BaseException:
            import traceback

            with open(os.environ.get("CHILD_ERRORS", os.devnull), "a") as handle:
                handle.write(traceback.format_exc())
        finally:
            os._exit(code)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.002)
        else:
            os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, 0)
    else:
        deadline = time.monotonic() + 120
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:  # a hung run is a failure, not a hung CI
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("run did not finish in 120 s")
            time.sleep(0.002)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def apply_action(config: Path) -> Callable[[], int]:
    return lambda: cli.main(["apply", "-c", str(config), "--quiet"])


def trace_points(action: Callable[[], int], trace: Path) -> list[str]:
    trace.unlink(missing_ok=True)
    code = fork_run(action, {faults.CRASH_TRACE_ENV: str(trace)})
    assert code in (0, 1), f"the uninterrupted run failed with {code}"
    return trace.read_text().split() if trace.exists() else []


def channel_files(channel: Path) -> dict[str, bytes]:
    """Everything a client can see (the state folder aside)."""
    out = {}
    for path in sorted(channel.rglob("*")):
        rel = path.relative_to(channel).as_posix()
        if path.is_file() and not rel.startswith(".reconciler/"):
            out[rel] = path.read_bytes()
    return out


def inventory(channel: Path) -> dict[str, object]:
    state = ChannelState.load(channel, "x")
    return {k: v.model_dump() for k, v in state.files.items()}


def _records(repodata: Mapping[str, object]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for section in ("packages", "packages.conda"):
        value = repodata.get(section) or {}
        assert isinstance(value, dict)
        found.update(value)
    return found


def check_invariants(
    channel: Path, subdirs: list[str], passive: set[str], had_noarch: bool
) -> list[str]:
    """What a client would trip over in ``channel`` right now; [] when it is usable."""
    problems: list[str] = []
    for subdir in subdirs:
        folder = channel / subdir
        for name in ("repodata.json", "repodata.json.zst", "current_repodata.json"):
            path = folder / name
            if not path.exists():
                continue
            data = path.read_bytes()
            try:
                if name.endswith(".zst"):
                    data = zstandard.ZstdDecompressor().decompress(data)
                repodata = orjson.loads(data)
            except Exception as exc:
                problems.append(f"{subdir}/{name} unreadable: {exc}")
                continue
            for filename, record in _records(repodata).items():
                target = folder / filename
                if not target.exists():
                    if filename not in passive:
                        problems.append(f"{subdir}/{name} names missing {filename}")
                    continue
                digest = hashlib.sha256(target.read_bytes()).hexdigest()
                if digest != record.get("sha256"):
                    problems.append(f"{subdir}/{filename} does not match {name}")
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.endswith((".conda", ".tar.bz2")) and path.name.startswith("."):
                    problems.append(f"hidden package {path}")
    if had_noarch and not (channel / "noarch" / "repodata.json").exists():
        problems.append("noarch/repodata.json disappeared")
    try:
        list(History(channel).runs())
    except Exception as exc:
        problems.append(f"history unreadable: {exc}")
    state = channel / STATE_NAME
    if state.exists():
        try:
            orjson.loads(state.read_bytes())
        except ValueError as exc:
            problems.append(f"state torn: {exc}")
    for path in channel.rglob("*"):
        if TEMP_PREFIX.strip(".") in path.name and not path.name.startswith(TEMP_PREFIX):
            problems.append(f"temporary file under a final name: {path}")
    return problems


@dataclass
class Tally:
    points: int = 0
    violations: list[str] = field(default_factory=list)
    converged: int = 0


def kill_and_converge(
    tally: Tally,
    prepare: Callable[[Path], Path],
    work: Path,
    point: str | float,
    expected_files: dict[str, bytes],
    expected_inventory: dict[str, object],
    subdirs: list[str],
    passive: set[str],
    action_for: Callable[[Path], Callable[[], int]],
) -> None:
    """One kill point: fresh copy, killed run, invariants, rerun, convergence."""
    shutil.rmtree(work, ignore_errors=True)
    config = prepare(work)
    channel = work / "chan"
    had_noarch = (channel / "noarch" / "repodata.json").exists()
    action = action_for(config)
    if isinstance(point, str):
        code = fork_run(action, {faults.CRASH_AT_ENV: point})
        assert code == -signal.SIGKILL, f"{point}: the run was not killed there ({code})"
    else:
        fork_run(action, {}, kill_after=point)
    tally.points += 1
    found = check_invariants(channel, subdirs, passive, had_noarch)
    tally.violations += [f"{point}: {p}" for p in found]
    code = fork_run(action, {})
    files, inv = channel_files(channel), inventory(channel)
    if code in (0, 1) and files == expected_files and inv == expected_inventory:
        tally.converged += 1
    else:
        differ = sorted(
            k for k in files.keys() | expected_files.keys() if files.get(k) != expected_files.get(k)
        )
        tally.violations.append(f"{point}: did not converge (exit {code}; differ: {differ[:5]})")


def random_delays(seed: int, count: int, span: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.0, span) for _ in range(count)]
