"""Serving benchmark: `reconcile serve` next to nginx on the same files, measured with wrk.

    python benchmarks/serve.py                 # 32 connections, 5 s per run, 3 repeats

Needs Debian's nginx and wrk (`apt-get install nginx wrk`). A channel holds a
repodata.json of 2,000 records and a 1 MB package. Three servers run on 127.0.0.1:

- `reconcile serve` alone, with one process and with ``--workers`` processes (by default
  as many as there are cores);
- nginx (1 worker, sendfile) serving the same folder as static files;
- the documented deployment (docs/serve.md): nginx in front, serving what is on disk
  and passing the rest to `reconcile serve`, which hands the files it has checked back to
  nginx (``--accel-redirect``); and the same without that option, where reconcile's
  answer is proxied through nginx ("proxied");
- with ``--framework-floor``, a bare aiohttp handler in a process of its own (a stat, a 304
  when the ETag matches, else ``sendfile``; no routing, tokens or checks): what the
  framework `reconcile serve` is built on costs by itself.

wrk (2 threads, 32 keep-alive connections) GETs one URL for the duration: repodata.json,
the 1 MB package, a revalidation of repodata.json (If-None-Match: 304), and repodata.json
of a private channel with a Bearer token (checked by reconcile in every deployment). Prints
requests/s and p99 latency (medians of the repeats), our ratio to nginx, and the
servers' CPU time per request (less sensitive to other load on the machine than rates).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.serve.nginx import (  # noqa: E402
    NGINX,
    direct_config,
    free_port,
    nginx,
    sample_config,
    sample_serve_arguments,
    wait_for_port,
)

THREADS = 2
TOKEN = "benchmark-token-2f9c61d0a7e4b3"
WRK = shutil.which("wrk")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the worker processes of ``serve --workers``)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *map(int, children.split())]


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) of one wrk run."""
    assert WRK is not None
    command = [
        WRK,
        f"-t{THREADS}",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors on {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
    return rate, float(value) * _UNITS[unit]


def framework_floor(port: int, root: str) -> None:
    """aiohttp with the least a file server does: stat the file, answer 304 when the
    client's ETag matches, else send it with ``loop.sendfile``. No routing, tokens, listing
    or symlink checks: what the framework costs by itself."""
    import asyncio
    import os as os_

    from aiohttp import web

    base = os_.path.realpath(root)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = f"{base}{request.path}"
        try:
            st = os_.stat(path)
        except OSError:
            return web.Response(status=404)
        headers = {"ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"'}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_length = st.st_size
        await response.prepare(request)
        with open(path, "rb", buffering=0) as handle:
            assert request.transport is not None
            await asyncio.get_running_loop().sendfile(request.transport, handle, 0, st.st_size)
        await response.write_eof()
        return response

    async def serve() -> None:
        runner = web.ServerRunner(web.Server(handle, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def main() -> None:
    from reconciler.kinds.conda.indexer import index_channel
    from tests.packages import PackageSpec, build_package

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=sorted({1, os.cpu_count() or 1}),
        help="reconcile serve --workers values to measure (default: 1 and the core count)",
    )
    parser.add_argument(
        "--framework-floor",
        action="store_true",
        help="also measure a bare aiohttp handler in a process of its own (the framework's cost)",
    )
    parser.add_argument("--floor-child", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        framework_floor(int(args.floor_child[0]), args.floor_child[1])
        return
    global THREADS
    THREADS = args.threads
    if NGINX is None or WRK is None:
        raise SystemExit("needs nginx and wrk: apt-get install nginx wrk")

    work = Path(tempfile.mkdtemp(prefix="reconcile-serve-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        root = work / "srv"
        channel = root / "chan"
        for i in range(2000):
            build_package(channel, PackageSpec(f"p{i:04d}", "1.0", subdir="linux-64"), ".conda")
        big = PackageSpec(
            "big", "1.0", subdir="linux-64", files={"data.bin": random.Random(1).randbytes(1 << 20)}
        )
        package = build_package(channel, big, ".conda").name
        index_channel(channel)
        shutil.copytree(channel, root / "internal")
        (root / "channels.yaml").write_text(
            "version: 1\nserve:\n  tokens:\n"
            "    - {name: bench, token_env: BENCH_TOKEN, channels: [internal]}\n"
            "channels:\n  - {name: chan, path: ./chan, subdirs: [linux-64]}\n"
            "  - {name: internal, access: private, path: ./internal, subdirs: [linux-64]}\n"
        )
        plain, front = free_port(), free_port()
        ours: dict[str, int] = {}  # our server's name in the table -> its port
        proxied = free_port()  # nginx in front of a reconcile without --accel-redirect
        started = [
            (f"reconcile serve -w{count}" if count > 1 else "reconcile serve", count, True)
            for count in args.workers
        ] + [("reconcile (proxied)", 1, False)]
        for name, count, documented in started:
            ours[name] = free_port()
            # Requests straight to reconcile never ask for the handoff: only nginx's do.
            options = sample_serve_arguments() if documented else []
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "reconciler",
                        "-q",
                        "serve",
                        "-c",
                        str(root / "channels.yaml"),
                        "--port",
                        str(ours[name]),
                        "--workers",
                        str(count),
                        *options,
                    ],
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "BENCH_TOKEN": TOKEN},
                )
            )
        floor_name = "aiohttp, bare handler"
        floor: dict[str, int] = {}
        if args.framework_floor:
            floor[floor_name] = free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--floor-child", str(floor[floor_name]), str(root)],
                    stderr=subprocess.DEVNULL,  # clients cut off at the end of each run
                )
            )
            wait_for_port(floor[floor_name])
        for port in ours.values():
            wait_for_port(port)
        time.sleep(1)  # every worker process up
        ours_pids = {
            name: process_tree(process.pid)
            for name, process in zip(ours, processes[: len(ours)], strict=True)
        }
        behind = ours.pop("reconcile (proxied)")
        first = next(iter(ours))
        servers = (
            direct_config(root, plain)
            + sample_config(root, front, ours[first])
            + sample_config(root, proxied, behind)
            .replace("upstream reconcile ", "upstream proxied ")
            .replace("http://reconcile;", "http://proxied;")
        )
        # The sample lists its private channels by name; ours is called "internal" too.
        with nginx(work / "nginx", servers, plain) as master:
            wait_for_port(front)
            workers = subprocess.run(
                ["pgrep", "-P", str(master.pid)], capture_output=True, text=True, check=True
            ).stdout.split()
            # CPU time of the processes that answer each deployment's requests.
            serving = {
                "nginx": [int(w) for w in workers],
                **ours_pids,
                "nginx -> reconcile": [*map(int, workers), *ours_pids[first]],
                "nginx -> reconcile (proxied)": [
                    *map(int, workers),
                    *ours_pids["reconcile (proxied)"],
                ],
                **({floor_name: [processes[-1].pid]} if floor else {}),
            }
            repodata = "/chan/linux-64/repodata.json"
            size = (channel / "linux-64" / "repodata.json").stat().st_size
            package_size = (channel / "linux-64" / package).stat().st_size
            print(
                f"repodata.json {size / 1e6:.2f} MB, package {package_size / 1e6:.2f} MB, "
                f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:.0f}s, "
                f"median of {args.repeats}"
            )
            ports = {
                "nginx": plain,
                **ours,
                "nginx -> reconcile": front,
                "nginx -> reconcile (proxied)": proxied,
                **floor,
            }
            cases: list[tuple[str, str, dict[str, str], list[str]]] = [
                ("repodata.json", repodata, {}, list(ports)),
                ("1 MB package", f"/chan/linux-64/{package}", {}, list(ports)),
                ("304 repodata.json", repodata, {"If-None-Match": ""}, list(ports)),
                (
                    "private repodata",
                    "/internal/linux-64/repodata.json",
                    {"Authorization": f"Bearer {TOKEN}"},
                    # nginx alone has no tokens
                    [*ours, "nginx -> reconcile", "nginx -> reconcile (proxied)"],
                ),
            ]
            print(
                f"{'request':20}{'server':30}{'req/s':>10}{'p99 ms':>10}{'vs nginx':>10}"
                f"{'CPU us/req':>12}"
            )
            for label, path, headers, names in cases:
                urls = {name: f"http://127.0.0.1:{ports[name]}{path}" for name in names}
                sent = {name: dict(headers) for name in names}
                for name in names:
                    if "If-None-Match" in headers:  # each server's own validator
                        etag = requests.head(urls[name], timeout=30).headers["ETag"]
                        sent[name]["If-None-Match"] = etag
                runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
                # Servers take turns within each repeat: load from elsewhere hits them alike.
                for _ in range(args.repeats):
                    for name in names:
                        used = cpu_seconds(serving[name])
                        rate, p99 = wrk(urls[name], args.connections, args.seconds, sent[name])
                        used = cpu_seconds(serving[name]) - used
                        runs[name].append((rate, p99, used / (rate * args.seconds) * 1e6))
                baseline = None
                for name in names:
                    rate, p99, cost = (
                        statistics.median(run[i] for run in runs[name]) for i in (0, 1, 2)
                    )
                    if name == "nginx":
                        baseline = rate
                    ratio = f"{rate / baseline:.2f}x" if baseline and name != "nginx" else ""
                    print(
                        f"{label:20}{name:30}{rate:10.0f}{p99:10.1f}{ratio:>10}{cost:12.1f}",
                        flush=True,
                    )
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
