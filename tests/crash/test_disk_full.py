"""A full disk: a clear error (exit 1), nothing half-written published, the previous index
still served, no temporary files left, and convergence once there is room again.

The channel lives on a small tmpfs mounted for the test (root only). Where mounting is
not permitted, the same tests run with ``RLIMIT_FSIZE`` on the `reconcile` process
instead: each file may only grow to the limit, and a write beyond it fails with EFBIG
as a full disk fails with ENOSPC. A mechanism that does not work here is skipped,
saying why. Every `reconcile` run is a real subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from reconciler.kinds.conda.indexer import index_channel
from tests.crash.harness import (
    Apply,
    Expect,
    Scenario,
    check_channel,
    cli_env,
    inventory,
    known_digests,
    leftovers,
    published,
    reconcile,
    upstream_records,
)
from tests.crash.scenarios import SUBDIRS, index_scenario, packages, write_config
from tests.packages import PackageSpec, build_package

pytestmark = pytest.mark.slow

PAGE = 4096
PADDING = 3000  # characters of text per record: index files of several pages
FULL_DISK = (os.strerror(errno.ENOSPC), os.strerror(errno.EFBIG))


class SmallDisk:
    """A folder on a small filesystem (``tmpfs``), or with a file size limit (``rlimit``)."""

    def __init__(self, mode: str, root: Path, logs: Path) -> None:
        self.mode = mode
        self.root = root
        self.logs = logs  # off the small disk, so what a run says is never lost
        self.limit: int | None = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Leave only ``leave`` bytes: of free space (tmpfs) or per file (rlimit)."""
        if self.mode == "rlimit":
            self.limit = leave
            return
        free = self.free_bytes()
        with (self.root / "filler").open("ab") as handle:
            handle.write(b"\0" * max(0, free - leave))

    def free(self) -> None:
        self.limit = None
        (self.root / "filler").unlink(missing_ok=True)

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.root)], check=True)

    def popen(self, args: list[str], cwd: Path, **kwargs: Any) -> subprocess.Popen[str]:
        """``python -m reconciler ARGS`` in ``cwd``, under the disk's file size limit."""
        limit = self.limit
        preexec: Callable[[], None] | None = None
        if limit is not None:

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *args],
            cwd=cwd,
            env=cli_env(),
            preexec_fn=preexec,
            text=True,
            **kwargs,
        )

    def run(self, args: list[str], cwd: Path) -> tuple[int, str]:
        """Run to the end; the exit code and what it wrote (stdout and stderr)."""
        if self.limit is None:  # a run without a limit is forked: the fast way
            log = self.logs / "run.log"
            log.unlink(missing_ok=True)
            return reconcile(args, cwd, log=log), log.read_text()
        process = self.popen(args, cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = process.communicate(timeout=120)
        return process.returncode, err


def _mount_tmpfs(target: Path, size: str) -> str | None:
    """Mount a tmpfs; None, or why it cannot be done here."""
    if not shutil.which("mount"):
        return "no mount command"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return (
            f"mount -t tmpfs is not permitted here ({result.stderr.strip() or result.returncode})"
        )
    return None


def _rlimit_problem(probe: Path) -> str | None:
    """None when a child process can be given a file size limit, or why not."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
            "with open(sys.argv[1], 'wb') as f: f.write(b'x' * 100)",
            str(probe),
        ],
        capture_output=True,
        text=True,
    )
    probe.unlink(missing_ok=True)
    if os.strerror(errno.EFBIG) in result.stderr:
        return None
    return f"RLIMIT_FSIZE does not limit writes here ({result.stderr.strip()[-200:]})"


@pytest.fixture(params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "rlimit":
        problem = _rlimit_problem(tmp_path / "probe")
        if problem:
            pytest.skip(problem)
        yield SmallDisk("rlimit", root, tmp_path)
        return
    problem = "mounting needs root" if os.geteuid() != 0 else _mount_tmpfs(root, "8m")
    if problem:
        pytest.skip(f"{problem}; the rlimit variant covers a full disk instead")
    try:
        yield SmallDisk("tmpfs", root, tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@contextlib.contextmanager
def serving(disk: SmallDisk, work: Path) -> Iterator[str]:
    """`reconcile serve` on ``work``'s config (a real server process); yields its URL."""
    log = disk.logs / "serve.log"
    with log.open("w") as handle:
        process = disk.popen(
            ["serve", "-c", "channels.yaml", "--port", "0"],
            work,
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )
    try:
        deadline = time.monotonic() + 30
        while " on http://" not in (text := log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.01)
        yield text.split(" on ", 1)[1].split()[0].rstrip("/")
        assert process.poll() is None, f"the server died: {log.read_text()[-2000:]}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.unlink()


def served_bytes(disk: SmallDisk, work: Path, path: str) -> bytes:
    with serving(disk, work) as url:
        response = requests.get(f"{url}/{path}", timeout=30)
    assert response.status_code == 200, (path, response.status_code)
    return response.content


def converges(disk: SmallDisk, work: Path, reference: Path) -> None:
    """With room again, a rerun produces exactly the uninterrupted run's channel."""
    disk.free()
    code, err = disk.run(["apply", "-c", "channels.yaml"], work)
    assert code == 0, err
    assert published(work / "chan") == published(reference / "chan")
    assert inventory(work / "chan") == inventory(reference / "chan")
    assert not leftovers(work / "chan")
    assert reconcile(["plan", "-c", "channels.yaml", "--detailed-exitcode"], work) == 0


def assert_clear_error(code: int, err: str, disk: SmallDisk) -> None:
    assert code == 1, f"expected a user-facing error (1), got {code}:\n{err}"
    assert "internal error" not in err and "Traceback" not in err, err
    assert any(reason in err for reason in FULL_DISK), err
    assert str(disk.root) in err, f"the error does not name the file or folder:\n{err}"
    assert "free some disk space" in err, err


# -- an index write that runs out of room midway -----------------------------------------


def patch_only_scenario(tmp_path: Path) -> Scenario:
    """Packages already indexed; the run only applies a new patch (the plan writes nothing)."""
    seed = tmp_path / "patch-seed"
    for spec, fmt in packages("1.0", padding=PADDING) + packages("2.0", padding=PADDING):
        build_package(seed / "chan", spec, fmt)
    write_config(seed)
    assert reconcile(["apply", "-c", "channels.yaml"], seed) == 0
    (seed / ".run.log").unlink()
    (seed / "patch.json").write_text(
        json.dumps({"noarch": {"packages.conda": {"gamma-2.0-0.conda": {"license": "BSD"}}}})
    )
    write_config(seed, patches="    patches: [patch.json]\n")
    return Scenario("patch", seed, Apply(), Expect(SUBDIRS, known_digests([seed / "chan"])), 0)


def next_budget(
    disk: SmallDisk, budget: int, failed: Path, sizes: dict[Path, int], again: bool
) -> int:
    """More room than ``budget``: a page more (tmpfs); or room for the file that did not
    fit, as the uninterrupted run left it (rlimit), so the next run fails further on."""
    if disk.mode == "tmpfs":
        return budget + PAGE
    if failed not in sizes:  # a file the finished run does not have: double
        return max(2 * budget, budget + 1)
    if again:  # it grows during the run (the history): a little more, not past other files
        return budget + max(64, budget // 8)
    return max(budget + 1, sizes[failed])


@pytest.mark.parametrize("change", ["packages", "patch"])
def test_index_write_on_a_full_disk_fails_cleanly_at_every_write(
    disk: SmallDisk, tmp_path: Path, change: str
) -> None:
    """Leave less room than the run needs (a page, or a file size, at a time) so the run
    fails at a different write each time, until it fits; after each failure the channel
    is usable, the previous index served, and a run with room converges."""
    if change == "packages":  # new packages, one deleted by hand, a patch
        scenario = index_scenario(tmp_path, "index", 0, padding=PADDING)
    else:
        scenario = patch_only_scenario(tmp_path)
    reference = tmp_path / "reference"
    shutil.copytree(scenario.seed, reference)
    assert reconcile(["apply", "-c", "channels.yaml"], reference) == 0
    subdir = "linux-64" if change == "packages" else "noarch"
    before = (scenario.seed / "chan" / subdir / "repodata.json").read_bytes()
    after = (reference / "chan" / subdir / "repodata.json").read_bytes()
    assert before != after
    work = disk.root / "work"
    sizes = {
        work / p.relative_to(reference): p.stat().st_size
        for p in (reference / "chan").rglob("*")
        if p.is_file()
    }
    failed_at: dict[int, str] = {}
    kept_previous = 0
    budget = 0
    while len(failed_at) < 40:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(scenario.seed, work)
        disk.fill(budget)
        code, err = disk.run(["apply", "-c", "channels.yaml"], work)
        if code == 0:
            disk.free()
            break
        assert_clear_error(code, err, disk)
        failed = Path(err.split("cannot write ", 1)[1].split(":", 1)[0])
        failed_at[budget] = failed.relative_to(work).as_posix()
        problems = check_channel(work / "chan", scenario.expect, True)
        assert not problems, (budget, problems)
        assert not leftovers(work / "chan"), (budget, leftovers(work / "chan"))
        now = (work / "chan" / subdir / "repodata.json").read_bytes()
        assert now in (before, after), "repodata.json is neither the previous nor the new one"
        if now == before:
            kept_previous += 1
            if kept_previous == 1:  # and the previous index is what clients get
                disk.free()
                assert served_bytes(disk, work, f"chan/{subdir}/repodata.json") == before
        converges(disk, work, reference)
        again = list(failed_at.values())[-2:-1] == [failed_at[budget]]
        budget = next_budget(disk, budget, failed, sizes, again)
    else:
        pytest.fail(f"the run never fitted: {failed_at}")
    print(f"{disk.mode}, {change}: failed at {failed_at}, then fitted in {budget} bytes")
    assert kept_previous >= 1, failed_at
    # A size limit per file cannot stop this run midway: the stat cache the plan writes
    # first is its largest file (the patch-only run gets past it; the tmpfs, page by page).
    single = disk.mode == "rlimit" and change == "packages"
    assert len(set(failed_at.values())) >= (1 if single else 3), failed_at


# -- a mirror download that does not fit -------------------------------------------------


class _Upstream(SimpleHTTPRequestHandler):
    """Serves a folder; ``hooks`` run once before the named path is answered."""

    def send_head(self) -> Any:
        hook = self.server.hooks.pop(self.path, None)  # type: ignore[attr-defined]
        if hook is not None:
            hook()
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def big_upstream(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, Callable[[], None]]]]:
    """State 1: two small packages. State 2 (live): one more, and a 2 MB one."""
    root = tmp_path / "upstream"
    small = [
        (PackageSpec("alpha", "1.0", subdir="linux-64"), ".conda"),
        (PackageSpec("gamma", "1.0", noarch="generic"), ".tar.bz2"),
    ]
    blob = random.Random(7).randbytes(2_000_000)  # incompressible
    grown = [
        (PackageSpec("alpha", "2.0", subdir="linux-64"), ".conda"),
        (PackageSpec("big", "1.0", subdir="linux-64", files={"share/big/blob": blob}), ".conda"),
    ]
    for spec, fmt in small:
        build_package(root / "1", spec, fmt)
        build_package(root / "2", spec, fmt)
    for spec, fmt in grown:
        build_package(root / "2", spec, fmt)
    index_channel(root / "1")
    index_channel(root / "2")
    live = root / "live"
    shutil.copytree(root / "1", live)
    hooks: dict[str, Callable[[], None]] = {}
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Upstream, directory=str(live))
    )
    server.hooks = hooks  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, hooks
    finally:
        server.shutdown()
        server.server_close()


def _switch(root: Path) -> None:
    live = root / "live"
    shutil.rmtree(live)
    shutil.copytree(root / "2", live)
    stamp = time.time() + 100  # a newer Last-Modified (one-second resolution)
    for path in live.rglob("*"):
        os.utime(path, (stamp, stamp))


def test_a_mirror_download_that_does_not_fit(
    disk: SmallDisk,
    tmp_path: Path,
    big_upstream: tuple[str, Path, dict[str, Callable[[], None]]],
) -> None:
    url, root, hooks = big_upstream
    seed = tmp_path / "seed"
    mirror = f"    mirrors:\n      - {{name: up, source: '{url}', retries: 0, timeout: 10}}\n"
    write_config(seed, mirror=mirror)
    assert reconcile(["apply", "-c", "channels.yaml"], seed) == 0  # state 1, off the disk
    _switch(root)
    reference = tmp_path / "reference"
    shutil.copytree(seed, reference)
    assert reconcile(["apply", "-c", "channels.yaml"], reference) == 0
    assert (reference / "chan" / "linux-64" / "big-1.0-0.conda").is_file()
    expect = Expect(
        SUBDIRS,
        known_digests([seed / "chan"], upstream_records(root / "1") + upstream_records(root / "2")),
    )
    work = disk.root / "work"
    shutil.copytree(seed, work)
    before = (work / "chan" / "linux-64" / "repodata.json").read_bytes()
    big = work / "chan" / "linux-64" / "big-1.0-0.conda"

    if disk.mode == "tmpfs":
        # Less free space than the downloads plus the margin: refused before anything starts.
        code, err = disk.run(["apply", "-c", "channels.yaml"], work)
        assert code == 1, err
        assert "not enough free disk space" in err and str(work / "chan") in err, err
        assert (work / "chan" / "linux-64" / "repodata.json").read_bytes() == before
        assert served_bytes(disk, work, "chan/linux-64/repodata.json") == before
        assert not big.exists() and not leftovers(work / "chan")
        assert not check_channel(work / "chan", expect, True)
        # Room for the check, but the disk fills up (another writer) during the download.
        disk.resize("80m")
        hooks["/linux-64/big-1.0-0.conda"] = lambda: disk.fill(256 * 1024)
    else:
        disk.fill(1_000_000)  # the 2 MB package cannot be written
    code, err = disk.run(["apply", "-c", "channels.yaml"], work)
    assert_clear_error(code, err, disk)
    assert "big-1.0-0.conda" in err, err
    # What fitted is published; the file that did not is neither on disk nor named.
    assert not big.exists() and not leftovers(work / "chan")
    assert not check_channel(work / "chan", expect, True)
    repodata = orjson.loads((work / "chan" / "linux-64" / "repodata.json").read_bytes())
    assert "big-1.0-0.conda" not in repodata["packages.conda"]
    assert "alpha-2.0-0.conda" in repodata["packages.conda"]
    converges(disk, work, reference)
    assert (
        hashlib.sha256(big.read_bytes()).digest()
        == hashlib.sha256((root / "2" / "linux-64" / "big-1.0-0.conda").read_bytes()).digest()
    )


def test_a_passive_fetch_that_does_not_fit(
    disk: SmallDisk,
    tmp_path: Path,
    big_upstream: tuple[str, Path, dict[str, Callable[[], None]]],
) -> None:
    """`reconcile serve` answers 502 naming the disk, keeps serving, and fetches once freed."""
    url, root, _hooks = big_upstream
    _switch(root)
    work = disk.root / "work"
    mirror = (
        f"    mirrors:\n      - {{name: up, source: '{url}', mode: passive, retries: 0,"
        " timeout: 10}\n"
    )
    write_config(work, mirror=mirror)
    code, err = disk.run(["apply", "-c", "channels.yaml"], work)
    assert code == 0, err
    repodata = (work / "chan" / "linux-64" / "repodata.json").read_bytes()
    wanted = "chan/linux-64/big-1.0-0.conda"
    expected = hashlib.sha256((root / "2" / "linux-64" / "big-1.0-0.conda").read_bytes())
    disk.fill(256 * 1024 if disk.mode == "tmpfs" else 1_000_000)
    with serving(disk, work) as served:
        response = requests.get(f"{served}/{wanted}", timeout=30)
        assert response.status_code == 502, response.status_code
        assert str(disk.root) in response.text, response.text
        assert any(reason in response.text for reason in FULL_DISK), response.text
        assert requests.get(f"{served}/chan/linux-64/repodata.json", timeout=30).content == (
            repodata
        )
        assert not (work / wanted).exists() and not leftovers(work / "chan")
    disk.free()
    with serving(disk, work) as served:
        response = requests.get(f"{served}/{wanted}", timeout=30)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == expected.digest()
    assert not leftovers(work / "chan")
