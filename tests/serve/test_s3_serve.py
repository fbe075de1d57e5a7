"""`reconcile serve` for channels in a bucket (moto's S3 server on 127.0.0.1): objects
streamed with Range and conditional requests, or redirects to presigned URLs; only
what the published index names; passive files fetched into the bucket; and the
server's sweep of deletions whose grace period is over."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler import cli
from reconciler.config.models import S3Location, load_config
from reconciler.engine.deletions import sweep_channels
from reconciler.kinds import REGISTRY
from reconciler.kinds.conda.indexer import index_channel
from reconciler.store.s3 import S3Store
from tests.client import solve
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.s3_server import S3Server
from tests.serve.helpers import running


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    build_package(root, PackageSpec("python", "3.12.0", subdir="linux-64"))
    build_package(root, PackageSpec("lib", "1.0", subdir="linux-64", depends=["python"]))
    build_package(root, PackageSpec("helper", "0.1", noarch="generic"), ".tar.bz2")
    index_channel(root)
    return root


@pytest.fixture
def setup(tmp_path: Path, upstream: Path, s3: S3Server, bucket: str) -> Iterator[dict[str, Any]]:
    """A bucket channel: a passive mirror over HTTP and a local package, applied."""
    store = S3Store(S3Location(bucket=bucket, prefix="chan"))
    mine = build_package(tmp_path / "built", PackageSpec("mine", "1.0", subdir="linux-64"))
    store.write(f"linux-64/{mine.name}", mine.read_bytes())
    with faulty_server(upstream) as (upstream_url, upstream_state):
        config = tmp_path / "channels.yaml"
        config.write_text(
            f"version: 1\nchannels:\n  - name: chan\n    path: s3://{bucket}/chan\n"
            "    subdirs: [linux-64, noarch]\n    index: {shards: true}\n    mirrors:\n"
            f"      - {{name: up, source: '{upstream_url}', mode: passive}}\n"
        )
        assert cli.main(["apply", "-c", str(config)]) == 0
        yield {
            "config": config,
            "store": store,
            "mine": mine,
            "upstream": upstream,
            "upstream_state": upstream_state,
            "s3": s3,
            "bucket": bucket,
        }


def test_objects_are_streamed_with_http_semantics(setup: dict[str, Any], tmp_path: Path) -> None:
    store: S3Store = setup["store"]
    with running(setup["config"]) as server:
        base = f"{server.url}/chan"
        index = requests.get(f"{base}/linux-64/repodata.json", timeout=10)
        assert index.status_code == 200
        assert index.content == store.read("linux-64/repodata.json")
        assert index.headers["Cache-Control"] == "public, max-age=60"
        assert index.headers["Content-Type"] == "application/json"
        etag = index.headers["ETag"]
        assert etag == store.stat("linux-64/repodata.json").tag  # type: ignore[union-attr]
        again = requests.get(
            f"{base}/linux-64/repodata.json", headers={"If-None-Match": etag}, timeout=10
        )
        assert again.status_code == 304 and not again.content
        data = setup["mine"].read_bytes()
        url = f"{base}/linux-64/{setup['mine'].name}"
        whole = requests.get(url, timeout=10)
        assert whole.content == data
        assert whole.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        tail = requests.get(url, headers={"Range": "bytes=-5"}, timeout=10)
        assert tail.content == data[-5:]
        bad = requests.get(url, headers={"Range": f"bytes={len(data) + 5}-"}, timeout=10)
        assert bad.status_code == 416
        head = requests.head(url, timeout=10)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
        # Shards the shard index names, and nothing else.
        shards = store.list_files("linux-64/shards")
        assert shards
        shard = requests.get(f"{base}/linux-64/shards/{shards[0].name}", timeout=10)
        assert shard.status_code == 200
        assert requests.get(f"{base}/linux-64/shards/{'0' * 64}.msgpack.zst").status_code == 404
        # A client solves through the server.
        solved = solve(base, ["mine"], "linux-64", tmp_path / "cache")
        assert solved == {"mine": setup["mine"].name}


def test_only_what_the_index_names_is_served(setup: dict[str, Any], tmp_path: Path) -> None:
    store: S3Store = setup["store"]
    stray = build_package(tmp_path / "stray", PackageSpec("stray", "1.0", subdir="linux-64"))
    store.write(f"linux-64/{stray.name}", stray.read_bytes())  # in the bucket, not indexed
    with running(setup["config"]) as server:
        base = f"{server.url}/chan"
        assert requests.get(f"{base}/linux-64/{stray.name}", timeout=10).status_code == 404
        assert requests.get(f"{base}/.reconciler/state.json", timeout=10).status_code == 404
        assert requests.get(f"{base}/linux-64/nope-1-0.conda", timeout=10).status_code == 404
        # Once an apply publishes it, the very next request finds it (no stale listing).
        assert cli.main(["apply", "-c", str(setup["config"])]) == 0
        served = requests.get(f"{base}/linux-64/{stray.name}", timeout=10)
        assert served.status_code == 200 and served.content == stray.read_bytes()


def test_a_passive_file_is_fetched_into_the_bucket(setup: dict[str, Any]) -> None:
    store: S3Store = setup["store"]
    s3: S3Server = setup["s3"]
    name = "lib-1.0-0.conda"
    assert store.stat(f"linux-64/{name}") is None
    expected = (setup["upstream"] / "linux-64" / name).read_bytes()
    with running(setup["config"]) as server:
        url = f"{server.url}/chan/linux-64/{name}"
        first = requests.get(url, timeout=30)
        assert first.status_code == 200 and first.content == expected
        assert store.read(f"linux-64/{name}") == expected  # stored, verified
        fetched = [r for r in setup["upstream_state"]["requests"] if r.endswith(name)]
        s3.reset(setup["bucket"])
        second = requests.get(url, timeout=30)
        assert second.content == expected
        assert [r for r in setup["upstream_state"]["requests"] if r.endswith(name)] == fetched
        assert s3.counts(setup["bucket"])["PUT"] <= 1  # at most the (batched) counts
    server.app.passive.flush()
    stats = json.loads(store.read(".reconciler/passive.json") or b"{}")
    assert stats["fetches"] == 1 and stats["bytes"] == len(expected)


def test_redirects_to_a_presigned_url(setup: dict[str, Any]) -> None:
    config: Path = setup["config"]
    config.write_text(
        config.read_text().replace(
            "    subdirs:", "    storage: {serve: redirect, presign_expiry: 120}\n    subdirs:"
        )
    )
    with running(config) as server:
        url = f"{server.url}/chan/linux-64/{setup['mine'].name}"
        response = requests.get(url, allow_redirects=False, timeout=10)
        assert response.status_code == 307
        assert (
            "Signature=" in response.headers["Location"]
            or "X-Amz-Signature=" in (response.headers["Location"])
        )
        assert response.headers["Cache-Control"] == "private, max-age=60"
        followed = requests.get(url, timeout=10)
        assert followed.content == setup["mine"].read_bytes()
        missing = requests.get(f"{server.url}/chan/linux-64/repodata.jsonx", timeout=10)
        assert missing.status_code == 404


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_the_server_sweeps_deletions_whose_grace_is_over(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("bucket")
        location, store = f"s3://{bucket}/chan", S3Store(S3Location(bucket=bucket, prefix="chan"))
    else:
        from reconciler.store.local import LocalStore

        location, store = "./chan", LocalStore(tmp_path / "chan")  # type: ignore[assignment]
    upstream = tmp_path / "up"
    for version in ("1.0", "2.0"):
        build_package(upstream, PackageSpec("tool", version, subdir="linux-64"))
    index_channel(upstream)
    config = tmp_path / "channels.yaml"
    text = (
        f"version: 1\nchannels:\n  - name: chan\n    path: {location}\n"
        "    subdirs: [linux-64, noarch]\n    mirrors:\n"
        f"      - {{name: up, source: '{upstream}', filters: {{latest: LATEST}}}}\n"
    )
    config.write_text(text.replace("LATEST", "2"))
    monkeypatch.setenv("RECONCILE_NOW", "2026-01-01T00:00:00+00:00")
    assert cli.main(["apply", "-c", str(config)]) == 0
    config.write_text(text.replace("LATEST", "1"))
    assert cli.main(["apply", "-c", str(config)]) == 0
    old = "linux-64/tool-1.0-0.conda"
    assert store.stat(old) is not None  # unpublished, kept for the grace period
    loaded = load_config(config)
    assert sweep_channels(loaded, REGISTRY) == {}  # not due yet
    monkeypatch.setenv("RECONCILE_NOW", "2026-01-01T00:02:01+00:00")
    assert sweep_channels(loaded, REGISTRY) == {"chan": 1}
    assert store.stat(old) is None
    state = json.loads(store.read(".reconciler/state.json") or b"{}")
    assert state["pending_deletions"] == []
    data = store.read("linux-64/tool-2.0-0.conda")
    assert data is not None and hashlib.sha256(data).hexdigest()
