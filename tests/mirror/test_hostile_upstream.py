"""A hostile upstream over real sockets: every trick ends in a clear error naming the
URL, within a bounded time and memory, and the channel stays consistent."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
import threading
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from reconciler import cli
from reconciler.config.models import Mirror
from reconciler.errors import ExitCode
from reconciler.kinds.conda import scan_alongside as scan_alongside_module
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.conda.select import NameGate
from reconciler.kinds.conda.upstream import CondaUpstream, Metadata, parse_body
from reconciler.kinds.pypi.client import MAX_PAGE_BYTES
from reconciler.store.local import TEMP_PREFIX, LocalStore
from reconciler.transport import http as upstream_module
from reconciler.transport import unzstd as unzstd_module
from reconciler.transport.http import Upstream, UpstreamError
from tests.hostile_server import HostileServer, gzip_bomb, hostile_server, zstd_bomb
from tests.packages import PackageSpec, build_package

ALPHA = "linux-64/alpha-1.0-0.conda"
BETA = "linux-64/beta-1.0-0.tar.bz2"
GAMMA = "noarch/gamma-1.0-0.conda"
# Every wait below is bounded by this: the test configs use timeout 1.
QUICK = 4.0


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[HostileServer]:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("alpha", "1.0", subdir="linux-64"))
    build_package(root, PackageSpec("beta", "1.0", subdir="linux-64"), ".tar.bz2")
    build_package(root, PackageSpec("gamma", "1.0", noarch="generic"))
    index_channel(root)
    # Built before serving (once per process): building one inside a request on a loaded
    # machine could outlast the client's 1 s header deadline.
    gzip_bomb(), zstd_bomb()
    with hostile_server(root) as server:
        yield server


class _Client:
    """A mirror's upstream with a test's settings (timeout 1 s, no retries by default)."""

    def __init__(
        self,
        server: HostileServer,
        tmp_path: Path,
        wanted: NameGate | None = None,
        **options: object,
    ) -> None:
        self.wanted = wanted  # the mirror's include rules by name, if any
        settings: dict[str, object] = {"timeout": 1, "retries": 0, **options}
        self.http = Upstream(server.url, tmp_path / "state", **settings)  # type: ignore[arg-type]
        self.conda = CondaUpstream(Mirror(name="m", source=server.url), None, None)
        self.conda.http = self.http

    def fetch_repodata(self, subdir: str) -> Metadata:
        return self.conda.fetch(subdir, None, self.wanted)

    def cached_repodata(self, subdir: str) -> dict[str, object] | None:
        kept = self.http.kept(f"{subdir}/repodata.json.zst")
        if kept is None:
            return None
        return parse_body(kept.body, "repodata.json.zst", "kept")

    def download(self, relative: str, out: Path, size: int | None, sha256: str | None) -> int:
        store = LocalStore(out.parent)
        writer = store.writer(out.name)
        try:
            written = self.http.download(relative, writer.handle, size, sha256)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        return written

    def get_cached(self, *args: Any, **kwargs: Any) -> Any:
        return self.http.get_cached(*args, **kwargs)

    def close(self) -> None:
        self.http.close()


def _client(
    server: HostileServer, tmp_path: Path, wanted: NameGate | None = None, **options: object
) -> _Client:
    return _Client(server, tmp_path, wanted, **options)


# A mirror including one name by name: its .zst repodata is read through the window.
ALPHA_ONLY = NameGate(((frozenset({"alpha"}), ()),))


def _record(root: Path, key: str) -> dict[str, object]:
    subdir, filename = key.split("/")
    repodata = orjson.loads((root / subdir / "repodata.json").read_bytes())
    section = "packages.conda" if filename.endswith(".conda") else "packages"
    record: dict[str, object] = repodata[section][filename]
    return record


def _download(upstream: _Client, root: Path, key: str, out: Path) -> int:
    record = _record(root, key)
    filename = key.split("/")[1]
    out.mkdir(parents=True, exist_ok=True)
    size, sha256 = record["size"], record["sha256"]
    assert isinstance(size, int) and isinstance(sha256, str)
    return upstream.download(key, out / filename, size, sha256)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- packages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        # The whole header phase has `timeout` seconds, not each read.
        ("slow-headers", r"no complete response headers within 1 s"),
        ("silent", r"no complete response headers within 1 s|timed out"),
        ("slow-body", r"too slow \(\d+ bytes in \d s\); gave up"),
        ("endless", r"more than the \d+ bytes recorded"),
        ("endless-chunked", r"more than the \d+ bytes recorded"),
        ("long-length", r"Content-Length \d+ differs from the \d+ bytes recorded"),
        ("short-length", r"Content-Length \d+ differs from the \d+ bytes recorded"),
        ("gzip-bomb", r"Content-Length \d+ \(Content-Encoding: gzip\) differs from the \d+ bytes"),
        ("garbage", r"Content-Length 4096 differs from the \d+ bytes recorded"),
        ("html", r"the upstream answered with an HTML page \(\d+ bytes\), not the file"),
        ("reset", r"body cut short"),
        ("500", r"HTTP 500 \(gave up after 1 attempts\)"),
        ("redirect-localhost", r"refused a redirect to host localhost \(http://localhost:\d+/"),
        ("redirect-foreign", r"refused a redirect to host 127\.0\.0\.2 \(http://127\.0\.0\.2:"),
        ("redirect-loop", r"more than 5 redirects"),
        ("redirect-file", r"refused a redirect to file:///etc/passwd: only http\(s\) URLs"),
    ],
)
def test_a_package_trick_is_a_clear_error(
    hostile: HostileServer, tmp_path: Path, behaviour: str, message: str
) -> None:
    hostile.behaviours[ALPHA] = behaviour
    upstream = _client(hostile, tmp_path)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        _download(upstream, hostile.root, ALPHA, tmp_path / "out")
    upstream.close()
    assert time.monotonic() - started < QUICK  # cut off, not waited out
    assert info.value.message.startswith(f"{hostile.url}/{ALPHA}: ")
    assert re.search(message, info.value.message), info.value.message
    assert not (tmp_path / "out" / "alpha-1.0-0.conda").exists()
    assert _leftovers(tmp_path / "out") == []


def test_a_dribbled_package_fails_by_a_deadline_with_retries(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """Each attempt ends after the timeout; retries add attempts, not unbounded waits."""
    hostile.behaviours[ALPHA] = ["slow-headers", "slow-body"]
    upstream = _client(hostile, tmp_path, retries=1, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        _download(upstream, hostile.root, ALPHA, tmp_path / "out")
    assert time.monotonic() - started < 2 * QUICK
    assert "too slow" in info.value.message  # the second attempt's failure
    # The next download finds the server well again.
    hostile.behaviours.clear()
    assert _download(upstream, hostile.root, ALPHA, tmp_path / "out") > 0
    upstream.close()


def test_a_connection_left_with_extra_bytes_is_not_reused(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """A body longer than its Content-Length leaves bytes on the connection: the next
    request must not read them as its answer."""
    hostile.behaviours["noarch/repodata.json.zst"] = "short-length"
    upstream = _client(hostile, tmp_path)
    with pytest.raises(UpstreamError, match="zstd data cut short"):
        upstream.fetch_repodata("noarch")
    assert _download(upstream, hostile.root, ALPHA, tmp_path / "out") > 0
    data = (tmp_path / "out" / "alpha-1.0-0.conda").read_bytes()
    assert hashlib.sha256(data).hexdigest() == _record(hostile.root, ALPHA)["sha256"]
    upstream.close()


@pytest.mark.parametrize(
    ("behaviour", "allowed"), [("redirect-same", ()), ("redirect-localhost", ("LocalHost",))]
)
def test_allowed_redirects_are_followed(
    hostile: HostileServer, tmp_path: Path, behaviour: str, allowed: tuple[str, ...]
) -> None:
    hostile.behaviours[BETA] = behaviour
    upstream = _client(hostile, tmp_path, allowed_hosts=allowed)
    written = _download(upstream, hostile.root, BETA, tmp_path / "out")
    upstream.close()
    data = (tmp_path / "out" / "beta-1.0-0.tar.bz2").read_bytes()
    assert written == len(data)
    assert hashlib.sha256(data).hexdigest() == _record(hostile.root, BETA)["sha256"]
    assert len([p for p in hostile.requests if p.endswith("beta-1.0-0.tar.bz2")]) == 2


def test_check_url(tmp_path: Path) -> None:
    upstream = Upstream(
        "https://conda.example/t/SECRET/forge", tmp_path, allowed_hosts=["Files.Example"]
    )
    upstream.check_url("https://conda.example/other/x.conda", "x")
    upstream.check_url("https://files.example/x.conda", "x")
    refusals = {
        "https://evil.example/x.conda": "x: refused a URL on host evil.example "
        "(https://evil.example/x.conda)",
        "http://conda.example/t/SECRET/forge/x.conda": "x: refused plain http "
        "http://conda.example/t/***/forge/x.conda",
        "file:///etc/passwd": "x: refused file:///etc/passwd: only http(s) URLs are followed",
        "ftp://user:pw@files.example/x": "x: refused ftp://***@files.example/x: only http(s)",
    }
    for url, message in refusals.items():
        with pytest.raises(UpstreamError) as info:
            upstream.check_url(url, "x")
        assert info.value.message.startswith(message), info.value.message
        assert "SECRET" not in info.value.message and "pw" not in info.value.message
    # An http source may be answered over https on its own host.
    Upstream("http://conda.example/c", tmp_path).check_url("https://conda.example/c/x", "x")


# -- repodata and pages -----------------------------------------------------------------


def _both(server: HostileServer, subdir: str, behaviour: str) -> None:
    server.behaviours[f"{subdir}/repodata.json.zst"] = behaviour
    server.behaviours[f"{subdir}/repodata.json"] = behaviour


@pytest.mark.parametrize(
    ("zst", "json", "message"),
    [
        ("garbage", None, r"\.zst: not valid zstd data"),
        ("404", "garbage", r"repodata\.json: not valid JSON repodata"),
        ("404", "html", r"repodata\.json: not valid JSON repodata"),
        ("short-length", None, r"\.zst: zstd data cut short"),
        ("long-length", None, r"\.zst: body cut short"),
        ("reset", None, r"\.zst: body cut short"),
        ("slow-headers", None, r"\.zst: no complete response headers within 1 s"),
        ("slow-body", None, r"\.zst: too slow"),
        ("redirect-foreign", None, r"\.zst: refused a redirect to host 127\.0\.0\.2"),
        ("404", "redirect-localhost", r"repodata\.json: refused a redirect to host localhost"),
    ],
)
def test_bad_repodata_is_a_clear_error_and_keeps_the_cached_copy(
    hostile: HostileServer, tmp_path: Path, zst: str, json: str | None, message: str
) -> None:
    upstream = _client(hostile, tmp_path)
    good = upstream.fetch_repodata("linux-64").repodata
    cached = tmp_path / "state" / "linux-64" / "repodata.json.zst"
    kept = cached.read_bytes()
    hostile.behaviours["linux-64/repodata.json.zst"] = zst
    if json:
        hostile.behaviours["linux-64/repodata.json"] = json
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        upstream.fetch_repodata("linux-64")
    assert time.monotonic() - started < QUICK
    assert info.value.message.startswith(f"{hostile.url}/linux-64/repodata.json")
    assert re.search(message, info.value.message), info.value.message
    if json == "html":
        assert info.value.hint == "the upstream sent an HTML page: a login or error page?"
    assert cached.read_bytes() == kept  # a bad answer never replaces the good copy
    assert not (tmp_path / "state" / "linux-64" / "repodata.json").exists()
    assert _leftovers(tmp_path / "state") == []
    assert upstream.cached_repodata("linux-64") == good
    upstream.close()


@pytest.mark.parametrize(
    ("path", "behaviour", "message"),
    [
        ("linux-64/repodata.json.zst", "zstd-bomb", "decompressed repodata is larger than"),
        ("linux-64/repodata.json.zst", "endless", "response larger than the limit of 16 MiB;"),
        (
            "linux-64/repodata.json.zst",
            "gzip-bomb",
            "larger than the limit of 16 MiB once decoded (Content-Encoding: gzip)",
        ),
        # The plain .json (the .zst answers 404): the body's own limit stops these.
        ("linux-64/repodata.json", "endless", "response larger than the limit of 16 MiB;"),
        (
            "linux-64/repodata.json",
            "endless-chunked",
            "response larger than the limit of 16 MiB;",
        ),
        (
            "linux-64/repodata.json",
            "gzip-bomb",
            "larger than the limit of 16 MiB once decoded (Content-Encoding: gzip)",
        ),
        (
            "linux-64/repodata.json",
            "zstd-encoded-bomb",
            "larger than the limit of 16 MiB once decoded (Content-Encoding: zstd)",
        ),
    ],
)
def test_repodata_bombs_and_endless_bodies_stop_at_the_limit(
    hostile: HostileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    behaviour: str,
    message: str,
) -> None:
    # A small limit keeps the test light; the cap works the same at 2 GiB.
    monkeypatch.setattr(upstream_module, "MAX_REPODATA_BYTES", 16 * 1024 * 1024)
    # Judged fast, however busy the machine: decompressed afterwards, in one call.
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", float("inf"))
    gzip_bomb(), zstd_bomb()  # built before measuring
    hostile.behaviours[path] = behaviour
    if not path.endswith(".zst"):
        hostile.behaviours[f"{path}.zst"] = "404"
    _fails_quickly_within_the_limit(hostile, tmp_path, path, message)


def _fails_quickly_within_the_limit(
    hostile: HostileServer,
    tmp_path: Path,
    path: str,
    message: str,
    wanted: NameGate | None = None,
) -> None:
    """Fetching linux-64's repodata fails with ``message`` about ``path``, quickly, within
    the limit of 16 MiB and one step of decoding, keeping nothing."""
    upstream = _client(hostile, tmp_path, wanted)
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError) as info:
            upstream.fetch_repodata("linux-64")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        upstream.close()
    assert time.monotonic() - started < QUICK
    assert info.value.message.startswith(f"{hostile.url}/{path}: ")
    assert message in info.value.message, info.value.message
    # The limit and one step of decoding (at most 32 MiB for zstd), not gigabytes.
    assert peak < 16 * 1024 * 1024 + 40 * 1024 * 1024, peak
    assert not list((tmp_path / "state").rglob("repodata.json*"))  # nothing kept


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("zstd-bomb", "decompressed repodata is larger than the limit of 16 MiB; gave up"),
        # Decompressed as it arrives, what is not zstd stops the download at once.
        ("endless", "not valid zstd data"),
        ("endless-chunked", "not valid zstd data"),
        ("gzip-bomb", "not valid zstd data"),
        ("garbage", "not valid zstd data"),
        ("short-length", "zstd data cut short"),
        ("reset", "body cut short"),
    ],
)
@pytest.mark.parametrize("wanted", [None, ALPHA_ONLY], ids=["whole", "through the window"])
def test_a_slow_zst_body_decompressed_alongside_fails_the_same_way(
    hostile: HostileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    behaviour: str,
    message: str,
    wanted: NameGate | None,
) -> None:
    """Judged slow at once (as on a slow link), the body goes to the decompressing thread
    piece by piece; hostile bodies still end in an error naming the URL, within the limit."""
    monkeypatch.setattr(upstream_module, "MAX_REPODATA_BYTES", 16 * 1024 * 1024)
    monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 0.0)
    monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", 0.0)
    started_threads = _count_unzstd_threads(monkeypatch, windowed=wanted is not None)
    gzip_bomb(), zstd_bomb()
    path = "linux-64/repodata.json.zst"
    hostile.behaviours[path] = behaviour
    _fails_quickly_within_the_limit(hostile, tmp_path, path, message, wanted)
    assert started_threads, "the body was not decompressed alongside"
    assert not [t for t in threading.enumerate() if t.name == "reconcile-unzstd"]


def test_a_content_length_that_is_no_number_counts_as_none(
    hostile: HostileServer, tmp_path: Path
) -> None:
    upstream = _client(hostile, tmp_path)
    try:
        expected = upstream.fetch_repodata("linux-64")
        (tmp_path / "state").rename(tmp_path / "state-before")  # no 304 this time
        hostile.behaviours["linux-64/repodata.json.zst"] = "odd-length"
        hostile.behaviours[BETA] = "odd-length"
        again = upstream.fetch_repodata("linux-64")
        written = _download(upstream, hostile.root, BETA, tmp_path / "out")
    finally:
        upstream.close()
    assert again.body == expected.body and again.repodata == expected.repodata
    data = (tmp_path / "out" / "beta-1.0-0.tar.bz2").read_bytes()
    assert written == len(data)
    assert hashlib.sha256(data).hexdigest() == _record(hostile.root, BETA)["sha256"]


@pytest.mark.parametrize("wanted", [None, ALPHA_ONLY], ids=["whole", "through the window"])
def test_a_slow_zst_body_decompressed_alongside_reads_the_same(
    hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wanted: NameGate | None
) -> None:
    upstream = _client(hostile, tmp_path, wanted)
    try:
        fast = upstream.fetch_repodata("linux-64")
        monkeypatch.setattr(unzstd_module, "JUDGE_AFTER", 0.0)
        monkeypatch.setattr(unzstd_module, "ALONGSIDE_IF_LEFT", 0.0)
        started_threads = _count_unzstd_threads(monkeypatch, windowed=wanted is not None)
        (tmp_path / "state").rename(tmp_path / "state-before")  # no 304 this time
        slow = upstream.fetch_repodata("linux-64")
    finally:
        upstream.close()
    assert started_threads and not slow.not_modified
    assert slow.body == fast.body
    assert slow.repodata == fast.repodata and len(slow.sparse) == len(fast.sparse) > 0
    for section in (0, 1):
        names = slow.sparse.names(section)
        assert list(names) == list(fast.sparse.names(section))
        for filename in names:
            assert slow.sparse.record(section, filename) == fast.sparse.record(section, filename)


def _count_unzstd_threads(monkeypatch: pytest.MonkeyPatch, windowed: bool = False) -> list[object]:
    """A list that grows by one each time a decompressing thread starts (``windowed``:
    one reading through the window)."""
    started: list[object] = []
    module: Any = scan_alongside_module if windowed else upstream_module
    name = "PieceThread" if windowed else "UnzstdThread"
    real = getattr(module, name)

    def counting(*args: Any) -> object:
        started.append(None)
        return real(*args)

    monkeypatch.setattr(module, name, counting)
    return started


def test_a_page_gzip_bomb_stops_at_the_page_limit(hostile: HostileServer, tmp_path: Path) -> None:
    """A simple-index page goes through the same conditional GET, with its own limit."""
    hostile.behaviours["simple/numpy/"] = "gzip-bomb"
    upstream = _client(hostile, tmp_path)
    shown = f"{hostile.url}/simple/numpy/"
    with pytest.raises(UpstreamError) as info:
        upstream.get_cached(shown, shown, "page", MAX_PAGE_BYTES, len)
    upstream.close()
    assert info.value.message == (
        f"{shown}: response larger than the limit of 64 MiB once decoded "
        "(Content-Encoding: gzip); gave up"
    )
    assert not (tmp_path / "page").exists()


# -- end to end: reconcile apply ----------------------------------------------------


class Project:
    def __init__(self, root: Path, server: HostileServer, capsys: pytest.CaptureFixture[str]):
        self.root = root
        self.server = server
        self.capsys = capsys
        self.channel = root / "mirror"
        self.config = root / "channels.yaml"
        self.config.write_text(
            textwrap.dedent(
                f"""\
                version: 1
                channels:
                  - name: mirror
                    path: ./mirror
                    subdirs: [linux-64, noarch]
                    mirrors:
                      - name: up
                        source: {server.url}
                        timeout: 1
                        retries: 0
                """
            )
        )

    def apply(self) -> tuple[int, str]:
        code = cli.main(["apply", "-c", str(self.config)])
        return code, self.capsys.readouterr().err

    def published(self, subdir: str) -> dict[str, dict[str, object]]:
        repodata = orjson.loads((self.channel / subdir / "repodata.json").read_bytes())
        return {**repodata["packages"], **repodata["packages.conda"]}

    def assert_consistent(self) -> None:
        """Every published file is there with its sha256; no temporary file is left."""
        for subdir in ("linux-64", "noarch"):
            for filename, record in self.published(subdir).items():
                data = (self.channel / subdir / filename).read_bytes()
                assert hashlib.sha256(data).hexdigest() == record["sha256"], filename
                assert len(data) == record["size"], filename
        assert _leftovers(self.channel) == []


@pytest.fixture
def project(tmp_path: Path, hostile: HostileServer, capsys: pytest.CaptureFixture[str]) -> Project:
    return Project(tmp_path, hostile, capsys)


def _add_packages(root: Path) -> list[str]:
    """New upstream versions (and a new ETag for both repodata files)."""
    added = [
        ("linux-64", PackageSpec("alpha", "2.0", subdir="linux-64"), ".conda"),
        ("linux-64", PackageSpec("beta", "2.0", subdir="linux-64"), ".tar.bz2"),
        ("linux-64", PackageSpec("delta", "1.0", subdir="linux-64"), ".conda"),
        ("noarch", PackageSpec("gamma", "2.0", noarch="generic"), ".conda"),
        ("noarch", PackageSpec("epsilon", "1.0", noarch="generic"), ".conda"),
    ]
    keys = []
    for subdir, spec, fmt in added:
        path = build_package(root, spec, fmt)
        keys.append(f"{subdir}/{path.name}")
    index_channel(root)
    return keys


def test_apply_against_hostile_package_answers(project: Project) -> None:
    assert project.apply()[0] == ExitCode.OK
    first = {s: project.published(s) for s in ("linux-64", "noarch")}
    keys = _add_packages(project.server.root)
    tricks = {
        "linux-64/alpha-2.0-0.conda": ("slow-headers", "no complete response headers within 1 s"),
        "linux-64/beta-2.0-0.tar.bz2": ("html", "answered with an HTML page"),
        "linux-64/delta-1.0-0.conda": ("gzip-bomb", "(Content-Encoding: gzip) differs from the"),
        "noarch/gamma-2.0-0.conda": ("redirect-localhost", "refused a redirect to host localhost"),
    }
    for key, (behaviour, _) in tricks.items():
        project.server.behaviours[key] = behaviour
    started = time.monotonic()
    code, err = project.apply()
    assert time.monotonic() - started < 2 * QUICK
    assert code == ExitCode.ERROR, err
    assert "Traceback" not in err and "internal error" not in err
    for key, (_, message) in tricks.items():
        assert f"{project.server.url}/{key}: " in err
        line = next(line for line in err.splitlines() if f"/{key}: " in line)
        assert message in line, line
    project.assert_consistent()
    # What did arrive is published; what did not is not named; nothing old went away.
    assert "epsilon-1.0-0.conda" in project.published("noarch")
    for key in tricks:
        subdir, filename = key.split("/")
        assert filename not in project.published(subdir)
        assert not (project.channel / key).exists()
    for subdir, records in first.items():
        assert records.items() <= project.published(subdir).items()
    # The upstream behaves again: the next apply converges.
    project.server.behaviours.clear()
    assert project.apply()[0] == ExitCode.OK
    project.assert_consistent()
    for key in keys:
        subdir, filename = key.split("/")
        assert filename in project.published(subdir)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("garbage", "linux-64/repodata.json.zst: not valid zstd data"),
        ("zstd-bomb", "linux-64/repodata.json.zst: decompressed repodata is larger than"),
        ("slow-headers", "linux-64/repodata.json.zst: no complete response headers within 1 s"),
        ("redirect-foreign", "linux-64/repodata.json.zst: refused a redirect to host 127.0.0.2"),
    ],
)
def test_apply_against_hostile_repodata_keeps_the_published_index(
    project: Project, monkeypatch: pytest.MonkeyPatch, behaviour: str, message: str
) -> None:
    monkeypatch.setattr(upstream_module, "MAX_REPODATA_BYTES", 16 * 1024 * 1024)
    assert project.apply()[0] == ExitCode.OK
    before = {
        p.relative_to(project.channel): p.read_bytes()
        for p in project.channel.glob("*/repodata.json*")
    }
    _add_packages(project.server.root)
    _both(project.server, "linux-64", behaviour)
    code, err = project.apply()
    assert code == ExitCode.ERROR, err
    assert "Traceback" not in err and "internal error" not in err
    assert f"{project.server.url}/{message}" in err
    after = {
        p.relative_to(project.channel): p.read_bytes()
        for p in project.channel.glob("*/repodata.json*")
    }
    assert after == before  # the previous index stays published, byte for byte
    assert not (project.channel / "linux-64" / "alpha-2.0-0.conda").exists()
    project.assert_consistent()


def test_watchdog_fires_due_deadlines_in_order_and_never_a_cancelled_one() -> None:
    watchdog = upstream_module._Watchdog()
    fired: list[str] = []
    late = watchdog.arm(0.2, lambda: fired.append("late"))
    cancelled = watchdog.arm(0.05, lambda: fired.append("cancelled"))
    watchdog.arm(0.1, lambda: fired.append("early"))
    watchdog.cancel(cancelled)
    deadline = time.monotonic() + QUICK
    while len(fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired == ["early", "late"]
    watchdog.cancel(late)  # already fired: nothing happens
    many = [watchdog.arm(60, lambda: fired.append("never")) for _ in range(600)]
    for entry in many:
        watchdog.cancel(entry)
    assert len(watchdog._heap) < 300  # cancelled entries do not pile up until their time
    time.sleep(0.05)
    assert fired == ["early", "late"]


def test_session_reads_proxies_from_the_environment_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "bypassed.example")
    session = Upstream("http://one.example/channel").session
    proxied = session.merge_environment_settings("http://one.example/a", {}, True, True, None)
    assert proxied["proxies"].get("http") == "http://proxy.example:3128"
    proxied["proxies"].clear()  # callers may change what they are given
    again = session.merge_environment_settings("http://one.example/b", {}, True, True, None)
    assert again["proxies"].get("http") == "http://proxy.example:3128"
    bypassed = session.merge_environment_settings("http://bypassed.example/a", {}, True, True, None)
    assert "http" not in bypassed["proxies"]


def test_watchdog_works_in_a_forked_child() -> None:
    watchdog = upstream_module._Watchdog()
    watchdog.cancel(watchdog.arm(60, lambda: None))  # the parent's thread runs
    with warnings.catch_warnings():  # 3.12+ warns about forking with threads: the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: a fresh watchdog state, its own thread
        fired = threading.Event()
        watchdog.arm(0.05, fired.set)
        os._exit(0 if fired.wait(QUICK) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
