"""A hostile upstream: every trick ends in a clear error naming the URL, and a
channel that still only publishes files that exist with their recorded sha256."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from reconciler import cli
from reconciler.errors import ExitCode, ReconcileError
from reconciler.index import index_channel
from reconciler.mirror.upstream import Upstream, UpstreamError
from tests.packages import PackageSpec, build_package
from tests.reliability.hostile_server import Hostile, hostile_server

ALPHA = "linux-64/alpha-1.0-0.conda"
GAMMA = "noarch/gamma-1.0-0.conda"


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Hostile]:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("alpha", "1.0", subdir="linux-64"))
    build_package(root, PackageSpec("gamma", "1.0", noarch="generic"))
    index_channel(root)
    with hostile_server(root) as server:
        yield server


def _record(server: Hostile, key: str) -> dict[str, object]:
    subdir, filename = key.split("/")
    repodata = orjson.loads((server.root / subdir / "repodata.json").read_bytes())
    record: dict[str, object] = repodata["packages.conda"][filename]
    return record


def _download(server: Hostile, tmp_path: Path, key: str, **options: object) -> int:
    upstream = Upstream(server.url, tmp_path / "state", timeout=1, retries=0, **options)  # type: ignore[arg-type]
    record = _record(server, key)
    subdir, filename = key.split("/")
    target = tmp_path / "out" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return upstream.download(
            subdir, filename, target, int(record["size"]), str(record["sha256"])
        )  # type: ignore[call-overload]
    finally:
        upstream.close()


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")], "temporary files left"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("slow", "too slow"),
        ("endless", "more than the"),
        ("redirect", "refused a redirect to host localhost"),
        ("bomb", "more than the"),  # stored as sent, never inflated: too big for the record
        ("garbage", "more than the"),
        ("login", "truncated"),
        ("short", "cut short"),
    ],
)
def test_each_trick_is_a_clear_error(
    hostile: Hostile, tmp_path: Path, mode: str, message: str
) -> None:
    hostile.behaviour[ALPHA] = mode
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        _download(hostile, tmp_path, ALPHA)
    assert message in info.value.message
    assert "alpha-1.0-0.conda" in info.value.message  # names what it was fetching
    assert time.monotonic() - started < 15  # the slow ones are cut off, not waited out
    assert not (tmp_path / "out" / "alpha-1.0-0.conda").exists()
    _no_leftovers(tmp_path / "out")


def test_an_allowed_redirect_is_followed(hostile: Hostile, tmp_path: Path) -> None:
    hostile.behaviour[ALPHA] = "redirect"
    written = _download(hostile, tmp_path, ALPHA, allowed_hosts=["localhost"])
    data = (tmp_path / "out" / "alpha-1.0-0.conda").read_bytes()
    assert written == len(data)
    assert hashlib.sha256(data).hexdigest() == _record(hostile, ALPHA)["sha256"]


@pytest.mark.parametrize("mode", ["garbage", "bomb", "login", "redirect"])
def test_bad_repodata_is_refused_naming_the_url(
    hostile: Hostile, tmp_path: Path, mode: str
) -> None:
    for name in ("repodata.json.zst", "repodata.json"):
        hostile.behaviour[f"linux-64/{name}"] = mode
    upstream = Upstream(hostile.url, tmp_path / "state", timeout=1, retries=0)
    with pytest.raises(ReconcileError) as info:
        upstream.fetch_repodata("linux-64")
    assert f"{hostile.url}/linux-64/repodata.json" in info.value.message
    assert not (tmp_path / "state" / "linux-64" / "repodata.json").exists()  # nothing kept


def test_apply_against_a_hostile_upstream_keeps_the_channel_consistent(
    hostile: Hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n    subdirs: [linux-64, noarch]\n"
        f"    mirrors:\n      - {{name: up, source: '{hostile.url}', timeout: 1, retries: 0}}\n"
    )
    hostile.behaviour[ALPHA] = "slow"
    hostile.behaviour[GAMMA] = "redirect"
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "too slow" in err and "refused a redirect to host localhost" in err
    channel = tmp_path / "chan"
    for subdir in ("linux-64", "noarch"):
        repodata = orjson.loads((channel / subdir / "repodata.json").read_bytes())
        for filename, record in repodata["packages.conda"].items():
            data = (channel / subdir / filename).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert repodata["packages.conda"] == {}  # neither file made it, so neither is named
    _no_leftovers(channel / "linux-64")
    # The upstream behaves again: the next apply converges.
    hostile.behaviour.clear()
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    assert (channel / ALPHA).is_file() and (channel / GAMMA).is_file()
