"""Untrusted upstream metadata and local sources: one bad record or file is that record's
problem, with a message naming it; everything else is mirrored."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.config.models import Mirror
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.conda.upstream import CondaUpstream
from reconciler.store.local import LocalStore
from reconciler.transport.http import UpstreamError
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package


def _upstream(root: Path) -> Path:
    for name in ("alpha", "beta", "gamma"):
        build_package(root, PackageSpec(name, "1.0", subdir="linux-64"))
    index_channel(root)
    return root


def _config(folder: Path, source: str, extra: str = "") -> Path:
    config = folder / "channels.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            channels:
              - name: chan
                path: ./chan
                subdirs: [linux-64]
                mirrors:
                  - name: up
                    source: {source}
                    retries: 0
                    timeout: 5
            {extra}"""
        )
    )
    return config


def _edit_repodata(root: Path, edit: dict[str, dict[str, object]]) -> None:
    path = root / "linux-64" / "repodata.json"
    data = json.loads(path.read_text())
    for filename, changes in edit.items():
        data["packages.conda"][filename].update(changes)
        for key, value in changes.items():
            if value is None:
                del data["packages.conda"][filename][key]
    path.write_text(json.dumps(data))
    (root / "linux-64" / "repodata.json.zst").unlink()


def test_a_record_claiming_an_absurd_size_is_refused_and_the_rest_proceed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = _upstream(tmp_path / "upstream")
    _edit_repodata(upstream, {"beta-1.0-0.conda": {"size": 10**15}})
    with faulty_server(upstream) as (url, state):
        config = _config(tmp_path, url)
        assert cli.main(["plan", "-c", str(config)]) == ExitCode.OK
        out = capsys.readouterr().out
        assert "refusing 'beta-1.0-0.conda': it claims 1000000000000000 bytes" in out
        assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    published = json.loads((tmp_path / "chan" / "linux-64" / "repodata.json").read_text())
    assert sorted(published["packages.conda"]) == ["alpha-1.0-0.conda", "gamma-1.0-0.conda"]
    assert not any("beta" in r for r in state["requests"])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"sha256": None}, "no sha256"),
        ({"size": None}, "no size"),
        ({"sha256": "not-a-digest"}, "sha256"),
        ({"size": "12"}, "'size' is str, not an integer"),
    ],
    ids=["no-sha256", "no-size", "bad-sha256", "size-as-text"],
)
def test_a_record_that_cannot_be_verified_is_never_downloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, object], problem: str
) -> None:
    upstream = _upstream(tmp_path / "upstream")
    _edit_repodata(upstream, {"beta-1.0-0.conda": changes})
    with faulty_server(upstream) as (url, state):
        config = _config(tmp_path, url)
        assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "refusing 'beta-1.0-0.conda'" in out and problem in out, out
    published = json.loads((tmp_path / "chan" / "linux-64" / "repodata.json").read_text())
    assert "beta-1.0-0.conda" not in published["packages.conda"]
    assert not any("beta" in r for r in state["requests"])


def test_a_fifo_in_a_local_upstream_is_an_error_not_a_hang(tmp_path: Path) -> None:
    upstream = _upstream(tmp_path / "upstream")
    (upstream / "linux-64" / "repodata.json.zst").unlink()
    (upstream / "linux-64" / "repodata.json").unlink()
    os.mkfifo(upstream / "linux-64" / "repodata.json")
    client = CondaUpstream(Mirror(name="m", source=str(upstream), timeout=2), None, None)
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"repodata\.json: not a regular file"):
        client.fetch("linux-64", None)
    assert time.monotonic() - started < 5


def test_a_fifo_in_place_of_a_package_fails_that_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = _upstream(tmp_path / "upstream")
    package = upstream / "linux-64" / "beta-1.0-0.conda"
    package.unlink()
    os.mkfifo(package)
    config = _config(tmp_path, str(upstream))
    started = time.monotonic()
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.ERROR
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "beta-1.0-0.conda: not a regular file" in err, err
    published = json.loads((tmp_path / "chan" / "linux-64" / "repodata.json").read_text())
    assert sorted(published["packages.conda"]) == ["alpha-1.0-0.conda", "gamma-1.0-0.conda"]


def test_index_never_follows_a_planted_symlink_out_of_the_channel(tmp_path: Path) -> None:
    channel = tmp_path / "chan"
    build_package(channel, PackageSpec("alpha", "1.0", subdir="linux-64"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.msgpack.zst").write_bytes(b"keep me")
    (outside / "state.json").write_bytes(b"keep me too")
    (channel / "linux-64" / "shards").symlink_to(outside)
    (channel / ".reconciler").symlink_to(outside)
    code = cli.main(["index", str(channel)])
    assert code == ExitCode.ERROR  # a clear error naming the link, not a write through it
    assert sorted(p.name for p in outside.iterdir()) == ["state.json", "victim.msgpack.zst"]
    assert (outside / "victim.msgpack.zst").read_bytes() == b"keep me"
    assert (outside / "state.json").read_bytes() == b"keep me too"
    assert LocalStore(channel).list_files("linux-64/shards") == []
