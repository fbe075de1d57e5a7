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

import atexit
import functools
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

from reconciler.conda.shards import read_shard, read_shard_index
from reconciler.config.models import S3Location
from reconciler.engine.history import History
from reconciler.engine.layout import STATE as STATE_NAME
from reconciler.engine.state import ChannelState
from reconciler.faults import CRASH_AT_ENV, CRASH_TRACE_ENV
from reconciler.store.base import Store
from reconciler.store.local import TEMP_PREFIX, LocalStore
from reconciler.store.s3 import S3Store
from tests.crash.forkserver import Forked, ForkServer
from tests.s3_server import copy_prefix, list_keys
from tests.stores import REPODATA_FILES, decode_index, index_records

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


# -- running the CLI -------------------------------------------------------------------


@functools.cache
def _temporary_folder() -> str:
    """Where the killed runs' temporary files go (a writer killed mid-upload leaves its
    spool file): a folder of this test process's, removed when it exits, not /tmp."""
    folder = tempfile.mkdtemp(prefix="reconcile-crash-tmp-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_AT_ENV, CRASH_TRACE_ENV)}
    env["RECONCILE_NOW"] = CLOCK
    env["TMPDIR"] = _temporary_folder()
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


@dataclass(frozen=True)
class Expect:
    """What a scenario allows the channel to hold at any instant."""

    subdirs: tuple[str, ...]
    # "subdir/filename" -> every sha256 the file may have (before, after, upstream)
    known: Mapping[str, frozenset[str]]
    # named by a published repodata but legitimately absent: passive files never
    # fetched, files the user deleted by hand before the run
    may_be_missing: frozenset[str] = frozenset()


def store_of(channel: Path | Store) -> Store:
    return LocalStore(channel) if isinstance(channel, Path) else channel


def check_channel(channel: Path | Store, expect: Expect, had_noarch: bool) -> list[str]:
    """What a client (or the next run) would trip over in ``channel`` now; [] if usable.

    ``channel``: a folder, or the store of a channel in a bucket (read through it)."""
    store = store_of(channel)
    problems: list[str] = []
    digests: dict[str, tuple[int, str]] = {}

    def digest_of(key: str) -> tuple[int, str] | None:
        if key not in digests:
            data = store.read(key)
            if data is None:
                return None
            digests[key] = (len(data), hashlib.sha256(data).hexdigest())
        return digests[key]

    def check_named(subdir: str, source: str, records: Mapping[str, Mapping[str, object]]) -> None:
        for filename, record in records.items():
            key = f"{subdir}/{filename}"
            found = digest_of(key)
            if found is None:
                if key not in expect.may_be_missing:
                    problems.append(f"{subdir}/{source} names {filename}, which is missing")
                continue
            if found[1] != record.get("sha256"):
                problems.append(f"{key} does not have the sha256 {source} records")
            if found[0] != record.get("size"):
                problems.append(f"{key} does not have the size {source} records")

    for subdir in expect.subdirs:
        for name in REPODATA_FILES:
            data = store.read(f"{subdir}/{name}")
            if data is None:
                continue
            try:
                check_named(subdir, name, index_records(decode_index(name, data)))
            except Exception as exc:
                problems.append(f"{subdir}/{name} unreadable: {type(exc).__name__}: {exc}")
        index = store.read(f"{subdir}/repodata_shards.msgpack.zst")
        if index is not None:
            try:
                shards = read_shard_index(index)["shards"]
                for package, digest in shards.items():
                    shard = store.read(f"{subdir}/shards/{digest}.msgpack.zst")
                    if shard is None:
                        problems.append(f"{subdir} shard index names missing shard of {package}")
                    elif hashlib.sha256(shard).hexdigest() != digest:
                        problems.append(f"{subdir} shard of {package} does not match its digest")
                    else:
                        check_named(subdir, f"shard {package}", index_records(read_shard(shard)))
            except Exception as exc:
                problems.append(f"{subdir} shards unreadable: {type(exc).__name__}: {exc}")
        run_exports = store.read(f"{subdir}/run_exports.json")
        if run_exports is not None:
            try:
                decode_index("run_exports.json", run_exports)
            except Exception as exc:
                problems.append(f"{subdir}/run_exports.json unreadable: {exc}")
        # No package file under its final name with other bytes.
        for info in store.list_files(subdir):
            if info.name.startswith(".") or not info.name.endswith((".conda", ".tar.bz2")):
                continue
            found = digest_of(info.key)
            if found is None or found[1] not in expect.known.get(info.key, frozenset()):
                problems.append(f"{info.key} holds bytes no repodata or upstream ever had")
    channeldata = store.read("channeldata.json")
    if channeldata is not None:
        try:
            orjson.loads(channeldata)
        except ValueError as exc:
            problems.append(f"channeldata.json unreadable: {exc}")
    if had_noarch and store.stat("noarch/repodata.json") is None:
        problems.append("noarch/repodata.json disappeared")
    if isinstance(channel, Path):
        for path in channel.rglob("*"):  # temporary files only ever under the temp prefix
            if "reconcile-tmp" in path.name and not path.name.startswith(TEMP_PREFIX):
                problems.append(f"temporary file under a final name: {path.relative_to(channel)}")
    try:
        History(store).runs()
    except Exception as exc:
        problems.append(f"history unreadable: {type(exc).__name__}: {exc}")
    state = store.read(STATE_NAME)
    if state is not None:
        try:
            ChannelState.model_validate_json(state)
        except ValueError as exc:
            problems.append(f"state inventory does not load: {exc}")
    return problems


def published(channel: Path | Store) -> dict[str, bytes]:
    """Everything a client can see: the channel's files outside the state folder."""
    store = store_of(channel)
    out = {}
    folders = [""]
    while folders:
        folder = folders.pop()
        files, dirs = store.listing(folder)
        for info in files:
            if not info.name.startswith("."):
                data = store.read(info.key)
                assert data is not None, info.key
                out[info.key] = data
        folders += [f"{folder}/{d}".strip("/") for d in dirs if not d.startswith(".")]
    return dict(sorted(out.items()))


def inventory(channel: Path | Store) -> dict[str, object]:
    data = store_of(channel).read(STATE_NAME)
    assert data is not None, "no state"
    state = ChannelState.model_validate_json(data)
    return {k: v.model_dump() for k, v in state.files.items()}


def leftovers(channel: Path) -> list[str]:
    """Temporary files anywhere under the channel, the state folder included."""
    return sorted(p.relative_to(channel).as_posix() for p in channel.rglob(f"{TEMP_PREFIX}*"))


# -- scenarios and kill points ---------------------------------------------------------


class Place:
    """Where a scenario's channel lives: ``chan/`` in each run's folder (this class), or
    a prefix of a bucket (:class:`BucketPlace`)."""

    def start(self, seed: Path, work: Path) -> None:
        """Copy the scenario's starting state for a run in ``work``."""
        shutil.copytree(seed, work)

    def store(self, work: Path) -> Store:
        return LocalStore(work / "chan")

    def channel(self, work: Path) -> Path | Store:
        """What the checks read: the folder (they also look at its temporary files)."""
        return work / "chan"

    def leftovers(self, work: Path) -> list[str]:
        return leftovers(work / "chan")

    def adopt(self, seed: Path) -> None:
        """Make ``seed`` (channels.yaml with ``path: ./chan``, packages in chan/) a
        starting state of this place (nothing to do on disk)."""


DISK = Place()


class BucketPlace(Place):
    """Each run's channel under its own prefix of ``bucket``: the seed's prefix copied."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def _prefix(self, work: Path) -> str:
        return f"{work.parent.name}-{work.name}"

    def _location(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def store(self, work: Path) -> Store:
        return S3Store(S3Location(bucket=self.bucket, prefix=self._prefix(work)))

    def channel(self, work: Path) -> Path | Store:
        return self.store(work)

    def leftovers(self, work: Path) -> list[str]:
        uploads = self.client.list_multipart_uploads(
            Bucket=self.bucket, Prefix=self._prefix(work) + "/"
        )
        return [u["Key"] for u in uploads.get("Uploads", ())]

    def start(self, seed: Path, work: Path) -> None:
        shutil.copytree(seed, work)
        source, target = self._prefix(seed), self._prefix(work)
        for key in list_keys(self.client, self.bucket, target):  # a run numbered before
            self.client.delete_object(Bucket=self.bucket, Key=key)
        copy_prefix(self.client, self.bucket, source, target)
        config = work / "channels.yaml"
        config.write_text(
            config.read_text().replace(self._location(source), self._location(target))
        )

    def adopt(self, seed: Path) -> None:
        """Upload the seed's package files (and remove the ones it no longer has), and point
        its configuration at the seed's prefix."""
        prefix = self._prefix(seed)
        local = {
            p.relative_to(seed / "chan").as_posix(): p
            for p in (seed / "chan").glob("*/*")
            if p.name.endswith((".conda", ".tar.bz2"))
        }
        for key in list_keys(self.client, self.bucket, prefix):
            relative = key[len(prefix) + 1 :]
            if relative.endswith((".conda", ".tar.bz2")) and relative not in local:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        for relative, path in local.items():
            self.client.put_object(
                Bucket=self.bucket, Key=f"{prefix}/{relative}", Body=path.read_bytes()
            )
        config = seed / "channels.yaml"
        config.write_text(
            config.read_text().replace("path: ./chan", f"path: {self._location(prefix)}")
        )


@dataclass
class Scenario:
    name: str
    seed: Path  # the starting folder: channels.yaml and chan/ (copied for every run)
    action: Action
    expect: Expect
    random_kills: int
    seed_number: int = 0  # of the random delays, for reproducibility
    place: Place = DISK


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
    place = scenario.place
    place.start(scenario.seed, work)
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
    channel = place.channel(work)
    problems = check_channel(channel, scenario.expect, True) + scenario.action.converge(work)
    assert not problems, problems
    assert not place.leftovers(work), place.leftovers(work)
    (work / ".run.log").unlink(missing_ok=True)
    return Reference(points, published(channel), inventory(channel), max(0.02, ended - first[0]))


def kill_point(
    scenario: Scenario, ref: Reference, root: Path, number: int, point: str | float
) -> Outcome:
    """Copy the start, kill a run at ``point``, check, rerun, compare, plan."""
    work = root / f"k{number:03d}"
    shutil.rmtree(work, ignore_errors=True)
    place = scenario.place
    place.start(scenario.seed, work)
    channel = place.channel(work)
    had_noarch = store_of(channel).stat("noarch/repodata.json") is not None
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
    if left := place.leftovers(work):
        outcome.problems.append(f"temporary files left after the rerun: {left[:4]}")
    try:
        runs = History(store_of(channel)).runs()
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


def sample_points(points: list[str], limit: int | None) -> list[str]:
    """At most ``limit`` of ``points``: the first hit of every step, then hits spread evenly
    over the run (a reduced set where each run is slow, as in a bucket)."""
    if limit is None or len(points) <= limit:
        return points
    chosen: list[str] = []
    for point in points:
        if point.split("#")[0] not in {c.split("#")[0] for c in chosen}:
            chosen.append(point)
    rest = [p for p in points if p not in chosen]
    room = max(0, limit - len(chosen))
    if room and rest:
        step = len(rest) / room
        chosen += [rest[int(i * step)] for i in range(min(room, len(rest)))]
    return [p for p in points if p in chosen]


def run_scenario(scenario: Scenario, root: Path, limit: int | None = None) -> Tally:
    """Reference run, then every traced checkpoint (at most ``limit`` of them) and the
    random instants, in parallel."""
    root.mkdir(parents=True, exist_ok=True)
    ref = reference(scenario, root)
    assert ref.points, f"{scenario.name}: the run reached no checkpoint"
    traced = sample_points(ref.points, limit)
    points: list[str | float] = [*traced, *random_delays(scenario, ref.work_time)]
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
        for filename, record in index_records(orjson.loads(path.read_bytes())).items():
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
