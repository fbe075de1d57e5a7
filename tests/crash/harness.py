"""Kill real `reconcile` processes at every checkpoint; check the channel, then convergence.

Every run is its own process that SIGKILLs itself at the checkpoint named by
``RECONCILE_CRASH_AT`` (``reconciler/faults.py``) or is SIGKILLed by the harness
after a seeded random delay. After each kill the channel must be usable by a
client (:func:`check_channel`); a rerun without the hook must then produce exactly
what an uninterrupted run produced, and ``reconcile plan --detailed-exitcode`` must
find nothing left to do. Kill points run in parallel on a small thread pool, each
in its own copy of the scenario's starting folder.

A fresh ``python -m reconciler`` spends ~0.4 s importing before it does ~0.1 s of
work, so the reference runs, the random-instant kills and every
``EXEC_EVERY``-th traced point start a fresh interpreter; the other runs are
forked from a pre-imported server (``tests/crash/forkserver.py``), still one
process per run. ``RECONCILE_CRASH_EXEC_EVERY=1`` makes every run a fresh one.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import requests
import zstandard

from reconciler.conda.shards import read_shard, read_shard_index
from reconciler.engine.history import History
from reconciler.engine.layout import STATE as STATE_NAME
from reconciler.engine.state import ChannelState
from reconciler.faults import CRASH_AT_ENV, CRASH_TRACE_ENV
from reconciler.store.local import TEMP_PREFIX, LocalStore
from tests.crash.forkserver import Forked, ForkServer

# One clock for every run, so outputs can be compared byte for byte. Without it
# only the CEP-47 ``indexed_timestamp`` of packages indexed by the interrupted run
# (in repodata*.json, current_repodata.json, shards) could differ; see
# docs/reliability.md.
CLOCK = "2026-06-01T12:00:00+00:00"
WORKERS = 3  # subprocesses in flight: keeps 2 cores busy while one run waits on I/O
EXEC_EVERY = max(1, int(os.environ.get("RECONCILE_CRASH_EXEC_EVERY", "4")))
RUN_TIMEOUT = 120.0  # a hung run is a failure, not a hung CI
REPO = Path(__file__).resolve().parents[2]

TALLIES: list[Tally] = []  # every scenario run in this session, for the summary line

# Published files that must parse whenever they exist, and name only usable files.
REPODATA_FILES = (
    "repodata.json",
    "repodata.json.zst",
    "repodata.json.bz2",
    "repodata_from_packages.json",
    "current_repodata.json",
)


# -- running the CLI -------------------------------------------------------------------


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_AT_ENV, CRASH_TRACE_ENV)}
    env["RECONCILE_NOW"] = CLOCK
    env["PYTHONPATH"] = str(REPO)
    env.pop("GITHUB_STEP_SUMMARY", None)  # never write into the CI job's summary
    env.update(extra or {})
    return env


_servers = threading.local()
_all_servers: list[ForkServer] = []
_servers_lock = threading.Lock()


def _fork_server() -> ForkServer:
    server: ForkServer | None = getattr(_servers, "server", None)
    if server is None or server.process.poll() is not None:
        server = _servers.server = ForkServer(cli_env(), REPO)
        with _servers_lock:
            _all_servers.append(server)
    return server


def close_fork_servers() -> None:
    with _servers_lock:
        servers, _all_servers[:] = list(_all_servers), []
    for server in servers:
        server.close()
    _servers.__dict__.clear()


Process = subprocess.Popen[bytes] | Forked


def start(
    args: Sequence[str],
    cwd: Path,
    extra: Mapping[str, str] | None = None,
    fresh: bool = False,
    log: Path | None = None,
) -> Process:
    """Start ``reconcile ARGS`` in ``cwd``: a fresh interpreter, or forked (``fresh=False``).

    Its stdout and stderr go to ``log`` (default: ``cwd/.run.log``).
    """
    log = log or cwd / ".run.log"
    if not fresh:
        return _fork_server().start(args, cwd, cli_env(extra), log)
    output = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *args],
            cwd=cwd,
            env=cli_env(extra),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    finally:
        output.close()


def finish(process: Process, timeout: float = RUN_TIMEOUT) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args!r} did not finish in {timeout:.0f} s") from None


def reconcile(
    args: Sequence[str],
    cwd: Path,
    extra: Mapping[str, str] | None = None,
    fresh: bool = False,
    log: Path | None = None,
) -> int:
    """``reconcile ARGS`` in ``cwd``; its exit code (-9: SIGKILLed)."""
    return finish(start(args, cwd, extra, fresh, log))


def kill_later(process: Process, trace: Path, delay: float) -> threading.Thread:
    """SIGKILL ``process`` ``delay`` seconds after it reached its first checkpoint."""

    def run() -> None:
        while not trace.exists():
            if process.poll() is not None:
                return
            time.sleep(0.002)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- actions: what one run of a scenario does ------------------------------------------


class Action:
    """One run of a scenario in ``work`` (a copy of its starting folder)."""

    def run(
        self, work: Path, extra: Mapping[str, str], kill_after: float | None, fresh: bool
    ) -> tuple[int, list[str]]:
        """Its exit code (-9: SIGKILLed) and what a client saw go wrong meanwhile."""
        raise NotImplementedError

    def converge(self, work: Path) -> list[str]:
        """The rerun without hooks; problems with it ([] when it finished cleanly)."""
        raise NotImplementedError


class Apply(Action):
    """``reconcile apply -c channels.yaml``."""

    def run(
        self, work: Path, extra: Mapping[str, str], kill_after: float | None, fresh: bool
    ) -> tuple[int, list[str]]:
        process = start(["apply", "-c", "channels.yaml", "--quiet"], work, extra, fresh)
        if kill_after is not None:
            kill_later(process, Path(extra[CRASH_TRACE_ENV]), kill_after)
        return finish(process), []

    def converge(self, work: Path) -> list[str]:
        code = reconcile(["apply", "-c", "channels.yaml", "--quiet"], work)
        return [] if code == 0 else [f"the rerun of apply exited {code}"]


@dataclass
class ServeFetch(Action):
    """``reconcile serve``, and a client asking for passive files it has never fetched."""

    paths: list[str]  # "<channel>/<subdir>/<filename>"
    sha256: dict[str, str]  # path -> the sha256 the channel's repodata records

    def _serve(
        self, work: Path, extra: Mapping[str, str], kill_after: float | None, fresh: bool
    ) -> tuple[int, list[str]]:
        log = work / ".run.log"
        log.write_bytes(b"")  # the server says where it listens here
        process = start(["serve", "-c", "channels.yaml", "--port", "0"], work, extra, fresh)
        try:
            problems: list[str] = []
            deadline = time.monotonic() + 30
            url = None
            while url is None:
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("serving ") and " on " in line:
                        url = line.rsplit(" on ", 1)[1].rstrip("/")
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            if url is None:
                return finish(process, 5), [f"serve never listened: {log.read_text()[-500:]}"]
            if kill_after is not None:
                kill_later(process, Path(extra[CRASH_TRACE_ENV]), kill_after)
            for path in self.paths:
                try:
                    response = requests.get(f"{url}/{path}", timeout=30)
                except requests.RequestException:
                    break  # the server died under us (before or mid-body): what a kill looks like
                if response.status_code != 200:
                    problems.append(f"GET {path}: HTTP {response.status_code}")
                elif hashlib.sha256(response.content).hexdigest() != self.sha256[path]:
                    problems.append(f"GET {path}: served bytes do not match repodata")
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            return finish(process), problems
        except BaseException:  # never leave a server running behind a failed check
            process.kill()
            finish(process, 5)
            raise

    def run(
        self, work: Path, extra: Mapping[str, str], kill_after: float | None, fresh: bool
    ) -> tuple[int, list[str]]:
        return self._serve(work, extra, kill_after, fresh)

    def converge(self, work: Path) -> list[str]:
        code, problems = self._serve(work, {}, None, False)
        if code != 0:
            problems.append(f"serve exited {code} after SIGTERM")
        return problems


# -- invariants -------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(repodata: Mapping[str, object]) -> dict[str, Mapping[str, object]]:
    found: dict[str, Mapping[str, object]] = {}
    for section in ("packages", "packages.conda"):
        value = repodata.get(section) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{section} is not a mapping")
        found.update(value)
    return found


def _decode(name: str, data: bytes) -> dict[str, object]:
    if name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif name.endswith(".bz2"):
        data = bz2.decompress(data)
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass(frozen=True)
class Expect:
    """What a scenario allows the channel to hold at any instant."""

    subdirs: tuple[str, ...]
    # "subdir/filename" -> every sha256 the file may have (before, after, upstream)
    known: Mapping[str, frozenset[str]]
    # named by a published repodata but legitimately absent: passive files never
    # fetched, files the user deleted by hand before the run
    may_be_missing: frozenset[str] = frozenset()


def check_channel(channel: Path, expect: Expect, had_noarch: bool) -> list[str]:
    """What a client (or the next run) would trip over in ``channel`` now; [] if usable."""
    problems: list[str] = []
    digests: dict[Path, str] = {}

    def check_named(subdir: str, source: str, records: Mapping[str, Mapping[str, object]]) -> None:
        for filename, record in records.items():
            key = f"{subdir}/{filename}"
            target = channel / subdir / filename
            if not target.is_file():
                if key not in expect.may_be_missing:
                    problems.append(f"{subdir}/{source} names {filename}, which is missing")
                continue
            if target not in digests:
                digests[target] = sha256_of(target)
            if digests[target] != record.get("sha256"):
                problems.append(f"{key} does not have the sha256 {source} records")
            if target.stat().st_size != record.get("size"):
                problems.append(f"{key} does not have the size {source} records")

    for subdir in expect.subdirs:
        folder = channel / subdir
        for name in REPODATA_FILES:
            path = folder / name
            if not path.exists():
                continue
            try:
                check_named(subdir, name, _records(_decode(name, path.read_bytes())))
            except Exception as exc:
                problems.append(f"{subdir}/{name} unreadable: {type(exc).__name__}: {exc}")
        index = folder / "repodata_shards.msgpack.zst"
        if index.exists():
            try:
                shards = read_shard_index(index.read_bytes())["shards"]
                for package, digest in shards.items():
                    shard = folder / "shards" / f"{digest}.msgpack.zst"
                    if not shard.is_file():
                        problems.append(f"{subdir} shard index names missing shard of {package}")
                    elif sha256_of(shard) != digest:
                        problems.append(f"{subdir} shard of {package} does not match its digest")
                    else:
                        check_named(
                            subdir, f"shard {package}", _records(read_shard(shard.read_bytes()))
                        )
            except Exception as exc:
                problems.append(f"{subdir} shards unreadable: {type(exc).__name__}: {exc}")
        if (folder / "run_exports.json").exists():
            try:
                _decode("run_exports.json", (folder / "run_exports.json").read_bytes())
            except Exception as exc:
                problems.append(f"{subdir}/run_exports.json unreadable: {exc}")
        if folder.is_dir():  # no package file under its final name with other bytes
            for path in folder.iterdir():
                if path.name.startswith(".") or not path.name.endswith((".conda", ".tar.bz2")):
                    continue
                key = f"{subdir}/{path.name}"
                digest = digests.get(path) or sha256_of(path)
                if digest not in expect.known.get(key, frozenset()):
                    problems.append(f"{key} holds bytes no repodata or upstream ever had")
    if (channel / "channeldata.json").exists():
        try:
            orjson.loads((channel / "channeldata.json").read_bytes())
        except ValueError as exc:
            problems.append(f"channeldata.json unreadable: {exc}")
    if had_noarch and not (channel / "noarch" / "repodata.json").is_file():
        problems.append("noarch/repodata.json disappeared")
    for path in channel.rglob("*"):  # temporary files only ever under the temp prefix
        if "reconcile-tmp" in path.name and not path.name.startswith(TEMP_PREFIX):
            problems.append(f"temporary file under a final name: {path.relative_to(channel)}")
    try:
        History(LocalStore(channel)).runs()
    except Exception as exc:
        problems.append(f"history unreadable: {type(exc).__name__}: {exc}")
    state = channel / STATE_NAME
    if state.exists():
        try:
            ChannelState.model_validate_json(state.read_bytes())
        except ValueError as exc:
            problems.append(f"state inventory does not load: {exc}")
    return problems


def published(channel: Path) -> dict[str, bytes]:
    """Everything a client can see: the channel's files outside the state folder."""
    out = {}
    for path in sorted(channel.rglob("*")):
        rel = path.relative_to(channel).as_posix()
        if path.is_file() and not rel.startswith(".reconciler/"):
            out[rel] = path.read_bytes()
    return out


def inventory(channel: Path) -> dict[str, object]:
    state = ChannelState.model_validate_json((channel / STATE_NAME).read_bytes())
    return {k: v.model_dump() for k, v in state.files.items()}


def leftovers(channel: Path) -> list[str]:
    """Temporary files anywhere under the channel, the state folder included."""
    return sorted(p.relative_to(channel).as_posix() for p in channel.rglob(f"{TEMP_PREFIX}*"))


# -- scenarios and kill points ---------------------------------------------------------


@dataclass
class Scenario:
    name: str
    seed: Path  # the starting folder: channels.yaml and chan/ (copied for every run)
    action: Action
    expect: Expect
    random_kills: int
    seed_number: int = 0  # of the random delays, for reproducibility


@dataclass
class Reference:
    points: list[str]
    files: dict[str, bytes]
    inventory: dict[str, object]
    work_time: float  # seconds from the first checkpoint to the end of the run


@dataclass
class Outcome:
    point: str
    killed: bool
    problems: list[str] = field(default_factory=list)
    converged: bool = False


@dataclass
class Tally:
    name: str
    points: int = 0
    at_random: int = 0
    converged: int = 0
    violations: list[str] = field(default_factory=list)
    steps: set[str] = field(default_factory=set)  # checkpoint names the runs reached

    def add(self, outcome: Outcome) -> None:
        if not outcome.killed:
            self.violations += outcome.problems
            return
        self.points += 1
        if not outcome.point.count("#"):
            self.at_random += 1
        self.converged += outcome.converged
        self.violations += [f"{outcome.point}: {p}" for p in outcome.problems]


def stable_points(points: list[str]) -> list[str]:
    """The traced hits every run reaches. ``download.mid`` fires per chunk, and a body is
    read as it arrives, so how many chunks a file takes depends on timing; each placed
    download had at least one, so the first ``download.placed``-count hits always happen."""
    placed = sum(p.startswith("download.placed#") for p in points)
    return [
        p for p in points if not p.startswith("download.mid#") or int(p.split("#")[1]) <= placed
    ]


def reference(scenario: Scenario, root: Path) -> Reference:
    """The uninterrupted run, traced: its kill points and what it produces."""
    work = root / "reference"
    shutil.copytree(scenario.seed, work)
    trace = root / "reference.trace"
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:  # when the run reaches its first checkpoint
        while not done.is_set() and not trace.exists():
            time.sleep(0.002)
        first.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code, seen = scenario.action.run(work, {CRASH_TRACE_ENV: str(trace)}, None, True)
    ended = time.monotonic()
    done.set()
    watcher.join()
    assert code == 0 and not seen, (
        f"{scenario.name}: the uninterrupted run exited {code}, {seen}: "
        + ((work / ".run.log").read_text()[-2000:])
    )
    points = stable_points(trace.read_text().split())
    problems = check_channel(work / "chan", scenario.expect, True) + scenario.action.converge(work)
    assert not problems, problems
    assert not leftovers(work / "chan"), leftovers(work / "chan")
    (work / ".run.log").unlink(missing_ok=True)
    return Reference(
        points, published(work / "chan"), inventory(work / "chan"), max(0.02, ended - first[0])
    )


def kill_point(
    scenario: Scenario, ref: Reference, root: Path, number: int, point: str | float
) -> Outcome:
    """Copy the start, kill a run at ``point``, check, rerun, compare, plan."""
    work = root / f"k{number:03d}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(scenario.seed, work)
    channel = work / "chan"
    had_noarch = (channel / "noarch" / "repodata.json").is_file()
    trace = work / ".trace"
    if isinstance(point, str):
        fresh = number % EXEC_EVERY == 0
        code, seen = scenario.action.run(work, {CRASH_AT_ENV: point}, None, fresh)
        label = point
    else:
        code, seen = scenario.action.run(work, {CRASH_TRACE_ENV: str(trace)}, point, True)
        label = f"random {point * 1000:.0f} ms"
    if code != -signal.SIGKILL:
        if isinstance(point, str):  # every traced point must be reached again
            return Outcome(label, False, [f"{label}: the run was not killed there (exit {code})"])
        shutil.rmtree(work, ignore_errors=True)
        return Outcome(label, False)  # it finished before the random instant
    outcome = Outcome(label, True, seen + check_channel(channel, scenario.expect, had_noarch))
    outcome.problems += scenario.action.converge(work)
    files = published(channel)
    if files != ref.files:
        differ = sorted(
            k for k in files.keys() | ref.files.keys() if files.get(k) != ref.files.get(k)
        )
        outcome.problems.append(f"outputs differ from the uninterrupted run: {differ[:6]}")
    try:
        if inventory(channel) != ref.inventory:
            outcome.problems.append("inventory differs from the uninterrupted run")
    except (OSError, ValueError) as exc:
        outcome.problems.append(f"inventory unreadable after the rerun: {exc}")
    if left := leftovers(channel):
        outcome.problems.append(f"temporary files left after the rerun: {left[:4]}")
    try:
        runs = History(LocalStore(channel)).runs()
        if runs and runs[-1].state not in ("completed", "failed", "skipped"):
            outcome.problems.append(f"history ends with an unfinished run: {runs[-1].state}")
    except Exception as exc:
        outcome.problems.append(f"history unreadable after the rerun: {exc}")
    plan = reconcile(["plan", "-c", "channels.yaml", "--detailed-exitcode", "--quiet"], work)
    if plan != 0:
        outcome.problems.append(f"plan --detailed-exitcode exited {plan} after the rerun")
    outcome.converged = not outcome.problems
    if outcome.converged:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def random_delays(scenario: Scenario, span: float) -> list[float]:
    rng = random.Random(f"{scenario.name}:{scenario.seed_number}")
    return [round(rng.uniform(0.0, span), 4) for _ in range(scenario.random_kills)]


def run_scenario(scenario: Scenario, root: Path) -> Tally:
    """Reference run, then every traced checkpoint and the random instants, in parallel."""
    root.mkdir(parents=True, exist_ok=True)
    ref = reference(scenario, root)
    assert ref.points, f"{scenario.name}: the run reached no checkpoint"
    points: list[str | float] = [*ref.points, *random_delays(scenario, ref.work_time)]
    tally = Tally(scenario.name, steps={p.split("#")[0] for p in ref.points})
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [
                pool.submit(kill_point, scenario, ref, root, number, point)
                for number, point in enumerate(points)
            ]
            for future in futures:
                tally.add(future.result())
    finally:
        close_fork_servers()
    return tally


def known_digests(
    folders: Iterable[Path], records: Iterable[tuple[str, str, str]] = ()
) -> dict[str, frozenset[str]]:
    """ "subdir/filename" -> sha256 of the package files under ``folders`` (channel roots)
    plus ``records`` (subdir, filename, sha256) from upstream repodata."""
    found: dict[str, set[str]] = {}
    for root in folders:
        for path in root.glob("*/*"):
            if path.name.endswith((".conda", ".tar.bz2")) and not path.name.startswith("."):
                found.setdefault(f"{path.parent.name}/{path.name}", set()).add(sha256_of(path))
    for subdir, filename, digest in records:
        found.setdefault(f"{subdir}/{filename}", set()).add(digest)
    return {k: frozenset(v) for k, v in found.items()}


def upstream_records(channel: Path) -> list[tuple[str, str, str]]:
    out = []
    for path in channel.glob("*/repodata.json"):
        for filename, record in _records(orjson.loads(path.read_bytes())).items():
            out.append((path.parent.name, filename, str(record.get("sha256"))))
    return out


def steps_line(tallies: Sequence[Tally]) -> str:
    steps = sorted(set().union(*(t.steps for t in tallies)))
    return f"kill harness checkpoints: {', '.join(steps)}"


def summary_line(tallies: Sequence[Tally]) -> str:
    points = sum(t.points for t in tallies)
    violations = sum(len(t.violations) for t in tallies)
    converged = sum(t.converged for t in tallies)
    detail = ", ".join(f"{t.name} {t.points}" for t in tallies)
    at_random = sum(t.at_random for t in tallies)
    return (
        f"kill harness: {points} kill points ({detail}; {at_random} at random instants), "
        f"{violations} invariant violations, {converged} converged"
    )
