"""Under load: clients download through `reconcile serve` while `reconcile apply` mirrors an
upstream that adds, removes and re-uploads packages.

Every byte a client receives must be what an index published during the test says that
file is: a client may get a 404 for a file that a newer index dropped, never other bytes,
half a file, or a file no index ever listed with those bytes. Bounded in time and in
requests.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler.kinds.conda.indexer import index_channel
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.serve.helpers import ServeProcess

DURATION = 12.0  # seconds of load
CLIENTS = 4
MAX_REQUESTS = 4000
LAG = 0.1  # seconds the index watcher may take to see a new index under load


def _spec(name: str, flavour: int) -> PackageSpec:
    # The same filename with other bytes: a re-upload.
    return PackageSpec(name, "1.0", subdir="linux-64", files={"data.txt": f"{flavour}".encode()})


def _published(channel_url: str, session: requests.Session) -> dict[str, str]:
    response = session.get(f"{channel_url}/linux-64/repodata.json", timeout=30)
    if response.status_code != 200:
        return {}
    data = response.json()
    records = {**data.get("packages", {}), **data.get("packages.conda", {})}
    return {name: record["sha256"] for name, record in records.items()}


@pytest.mark.slow
def test_clients_only_ever_get_published_bytes(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    names = [f"pkg{i}" for i in range(8)]
    for name in names:
        build_package(upstream, _spec(name, 0))
    index_channel(upstream)
    config = tmp_path / "channels.yaml"
    # filename -> sha256 -> when an index naming it was first seen (monotonic seconds)
    seen: dict[str, dict[str, float]] = {}
    seen_lock = threading.Lock()
    received: list[tuple[str, str, str, float]] = []  # name, digest, listed sha, when
    problems: list[str] = []
    stats = {"requests": 0, "ok": 0, "gone": 0}
    stop = threading.Event()

    with faulty_server(upstream) as (url, upstream_state):
        config.write_text(
            "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n    subdirs: [linux-64]\n"
            f"    mirrors:\n      - {{name: up, source: '{url}', retries: 1, timeout: 10}}\n"
        )
        apply = [sys.executable, "-m", "reconciler", "apply", "-c", str(config), "--wait"]
        subprocess.run(apply, check=True, capture_output=True, cwd=tmp_path)
        server = ServeProcess(config, cwd=tmp_path)
        channel_url = f"{server.url}/chan"

        def note(index: dict[str, str]) -> None:
            now = time.monotonic()
            with seen_lock:
                for name, sha in index.items():
                    seen.setdefault(name, {}).setdefault(sha, now)

        def watch_indexes() -> None:
            session = requests.Session()
            while not stop.is_set():
                note(_published(channel_url, session))
                time.sleep(0.005)

        def client(seed: int) -> None:
            rng = random.Random(seed)
            session = requests.Session()
            while not stop.is_set() and stats["requests"] < MAX_REQUESTS:
                index = _published(channel_url, session)
                if not index:
                    continue
                note(index)
                # Mostly the packages that get re-uploaded: that is where bytes change.
                reused = sorted(n for n in index if n.startswith("pkg"))
                name = rng.choice(reused if reused and rng.random() < 0.8 else sorted(index))
                stats["requests"] += 1
                response = session.get(f"{channel_url}/linux-64/{name}", timeout=30)
                if response.status_code == 404:
                    stats["gone"] += 1  # a newer index dropped it: allowed
                    continue
                if response.status_code != 200:
                    problems.append(f"{name}: HTTP {response.status_code}")
                    continue
                stats["ok"] += 1
                digest = hashlib.sha256(response.content).hexdigest()
                received.append((name, digest, index[name], time.monotonic()))

        threads = [threading.Thread(target=watch_indexes, daemon=True)]
        threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        rng = random.Random(7)
        started = time.monotonic()
        changes = 0
        try:
            while time.monotonic() - started < DURATION:
                # The upstream moves: new packages (whose downloads keep the run busy), one
                # gone, several re-uploaded.
                changes += 1
                for extra in range(12):
                    new = build_package(upstream, _spec(f"zz{changes}x{extra}", 0))
                    # Slow downloads (after the re-uploads: they sort last) keep the run busy
                    # while the re-uploaded files are already in place.
                    upstream_state["faults"][f"/linux-64/{new.name}"] = ["delay"] * 3
                gone = upstream / "linux-64" / f"{rng.choice(names)}-1.0-0.conda"
                gone.unlink(missing_ok=True)
                for reuploaded in rng.sample(names, 3):
                    build_package(upstream, _spec(reuploaded, changes))
                index_channel(upstream)
                run = subprocess.run(apply, capture_output=True, text=True, cwd=tmp_path)
                assert run.returncode == 0, run.stderr
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            server.stop()

    # Bytes a client got must be named by an index published by then: the one it read, or
    # one the watcher saw first no later than the download ended (plus its polling lag).
    for name, digest, listed, when in received:
        first = seen.get(name, {}).get(digest)
        if digest != listed and (first is None or first > when + LAG):
            problems.append(f"{name}: got bytes {digest[:12]} no index published by then named")
    assert not problems, problems[:10]
    assert changes >= 2, "the upstream did not move during the test"
    assert stats["ok"] >= 50, stats  # the clients did download under load
    # And the channel is consistent at the end: every listed file has the listed bytes.
    final = json.loads((tmp_path / "chan" / "linux-64" / "repodata.json").read_text())
    records: dict[str, Any] = {**final["packages"], **final["packages.conda"]}
    for name, record in records.items():
        data = (tmp_path / "chan" / "linux-64" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"], name
