"""Object storage benchmarks: channels in an S3 bucket (moto's server on 127.0.0.1).

    python benchmarks/storage.py               # both, medians of 3
    python benchmarks/storage.py index -n 10000 -r 3
    python benchmarks/storage.py mirror -n 2000 -r 3

(a) index: 10,000 synthetic packages (70% ``.conda``, 4 subdirs) uploaded to a bucket
once per tool; then, per repeat, the index outputs are removed and both tools index
the bucket cold, then again with nothing changed (no-op): ``reconcile index
s3://...`` (in-process ``index_channel`` on the S3 store: repodata.json + .zst, and
our other defaults: repodata_from_packages, current_repodata, run_exports,
channeldata, index.html) and ``rattler.index.index_s3`` (repodata.json + .zst, no
shards), each in a child process, against the same server in the same run.

(b) mirror: an active mirror of 2,000 packages served over HTTP from 127.0.0.1,
applied into a folder and into a bucket (``reconcile apply``), then applied again
with nothing changed.

Each figure is a median of the repeats; the requests each run made (counted by the
test server per bucket: LIST, HEAD, GET, GET_PACKAGE for package files, PUT,
DELETE, POST) are printed with it. moto is a Python server: the absolute times are
mostly its; the request counts are what an S3 bill and a distant endpoint see.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(HERE))

OPERATIONS = ("LIST", "HEAD", "GET", "GET_PACKAGE", "PUT", "DELETE", "POST")


# -- child processes: one timed run each ------------------------------------------------


def child(tool: str, target: str, endpoint: str) -> None:
    import asyncio

    from memory import PeakMemory

    if tool == "rattler":
        from rattler.index import S3Credentials, index_s3

        credentials = S3Credentials(
            endpoint_url=endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            addressing_style="path",
        )
        with PeakMemory() as peak:
            start = time.perf_counter()
            asyncio.run(
                index_s3(target, credentials=credentials, write_zst=True, write_shards=False)
            )
            elapsed = time.perf_counter() - start
    elif tool == "ours":
        from reconciler.kinds.conda.indexer import index_channel
        from reconciler.store import open_store

        store = open_store(target)
        with PeakMemory() as peak:
            start = time.perf_counter()
            index_channel(None, store=store, channel_name="chan")
            elapsed = time.perf_counter() - start
    else:  # apply: target is a channels.yaml
        from reconciler import cli

        with PeakMemory() as peak:
            start = time.perf_counter()
            code = cli.main(["apply", "-c", target, "--quiet"])
            elapsed = time.perf_counter() - start
        if code != 0:
            raise SystemExit(code)
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.mb}))


def timed(tool: str, target: str, server: Any, bucket: str | None) -> dict[str, Any]:
    env = {**os.environ, **server.env(), "PYTHONPATH": str(REPO_ROOT)}
    if bucket:
        server.reset(bucket)
    command = [sys.executable, __file__, "--child", tool, target, server.url]
    for _attempt in range(3):
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode == 0:
            result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
            result["requests"] = dict(server.counts(bucket)) if bucket else {}
            return result
        # rattler's indexers have been seen to die with a signal now and then: say so, retry
        # (the requests of a failed attempt are not counted).
        print(f"  ({tool} exited with {run.returncode}; retrying)", flush=True)
        if bucket:
            server.reset(bucket)
    raise SystemExit(f"{tool} failed three times on {target}:\n{run.stderr[-3000:]}")


# -- helpers ----------------------------------------------------------------------------


def upload_folder(client: Any, folder: Path, bucket: str, prefix: str) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, files))
    return len(files)


def remove_outputs(client: Any, bucket: str, prefix: str) -> None:
    """Everything but the package files: the channel as it was before any index."""
    from tests.s3_server import list_keys

    doomed = [
        k for k in list_keys(client, bucket, prefix) if not k.endswith((".conda", ".tar.bz2"))
    ]
    for start in range(0, len(doomed), 1000):
        chunk = doomed[start : start + 1000]
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk]})


def requests_text(counts: dict[str, int]) -> str:
    return " ".join(f"{op} {counts[op]}" for op in OPERATIONS if counts.get(op))


def report(title: str, results: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    print()
    print(title)
    print(f"{'run':24}{'median s':>10}{'peak MB':>10}  requests (median run)")
    for (tool, phase), runs in results.items():
        seconds = [r["seconds"] for r in runs]
        middle = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        print(
            f"{tool + ' ' + phase:24}{statistics.median(seconds):10.2f}"
            f"{max(r['peak_mb'] for r in runs):10.0f}  {requests_text(middle['requests'])}"
        )


# -- (a) index ------------------------------------------------------------------------


def bench_index(server: Any, count: int, repeats: int, work: Path) -> None:
    from index import SUBDIRS, build_synthetic_channel

    source = work / "index-source"
    started = time.perf_counter()
    build_synthetic_channel(source, count)
    client = server.client()
    for tool in ("ours", "rattler"):
        client.create_bucket(Bucket=f"bench-{tool}")
        upload_folder(client, source, f"bench-{tool}", "chan")
    print(
        f"(a) {count} packages over {len(SUBDIRS)} subdirs built and uploaded to two buckets "
        f"in {time.perf_counter() - started:.0f} s; {os.cpu_count()} cores",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        for tool in ("ours", "rattler"):
            bucket = f"bench-{tool}"
            remove_outputs(client, bucket, "chan")
            for phase in ("cold", "no-op"):
                result = timed(tool, f"s3://{bucket}/chan", server, bucket)
                results.setdefault((tool, phase), []).append(result)
                print(
                    f"  repeat {repeat + 1}: {tool:8} {phase:6} {result['seconds']:8.2f} s  "
                    f"{requests_text(result['requests'])}",
                    flush=True,
                )
    report(f"(a) index {count} packages in a bucket, median of {repeats}:", results)


# -- (b) mirror -----------------------------------------------------------------------

MIRROR_CONFIG = """\
version: 1
channels:
  - name: chan
    path: {path}
    subdirs: [noarch, linux-64, osx-arm64, win-64]
    mirrors:
      - {{name: up, source: "{url}", parallel_downloads: 8, retries: 0}}
"""


def bench_mirror(server: Any, count: int, repeats: int, work: Path) -> None:
    from index import build_synthetic_channel

    from reconciler.kinds.conda.indexer import index_channel
    from tests.http_server import serve_directory

    upstream = work / "mirror-upstream"
    build_synthetic_channel(upstream, count)
    index_channel(upstream)
    size = sum(p.stat().st_size for p in upstream.rglob("*.conda")) + sum(
        p.stat().st_size for p in upstream.rglob("*.tar.bz2")
    )
    print(f"(b) upstream of {count} packages ({size / 1e6:.0f} MB) served on 127.0.0.1")
    client = server.client()
    client.create_bucket(Bucket="bench-mirror")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with serve_directory(upstream) as (url, _):
        for repeat in range(repeats):
            for where in ("folder", "bucket"):
                root = work / f"mirror-{where}-{repeat}"
                root.mkdir()
                path = f"s3://bench-mirror/r{repeat}" if where == "bucket" else "./channel"
                config = root / "channels.yaml"
                config.write_text(MIRROR_CONFIG.format(path=path, url=url))
                bucket = "bench-mirror" if where == "bucket" else None
                for phase in ("apply", "no-op"):
                    result = timed("apply", str(config), server, bucket)
                    results.setdefault((where, phase), []).append(result)
                    print(
                        f"  repeat {repeat + 1}: {where:7} {phase:6} {result['seconds']:8.2f} s"
                        f"  {requests_text(result['requests'])}",
                        flush=True,
                    )
                shutil.rmtree(root)
    report(f"(b) mirror {count} packages, median of {repeats}:", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["index", "mirror"], default=None)
    parser.add_argument("-n", "--packages", type=int, default=None)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("TOOL", "TARGET", "URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from tests.s3_server import start_s3_server

    os.environ.setdefault("RECONCILE_CACHE_DIR", tempfile.mkdtemp(prefix="reconcile-bench-cache-"))
    work = Path(tempfile.mkdtemp(prefix="reconcile-bench-storage-"))
    try:
        with start_s3_server() as server:
            if args.what in (None, "index"):
                bench_index(server, args.packages or 10_000, args.repeats, work)
            if args.what in (None, "mirror"):
                bench_mirror(server, args.packages or 2_000, args.repeats, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
