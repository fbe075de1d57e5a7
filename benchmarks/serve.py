"""Serving benchmark: `reconcile serve` next to `python -m http.server` on the same files.

    python benchmarks/serve.py                 # 32 clients, 5 s per run, 3 repeats

A channel holds a repodata.json of 2,000 records and a 1 MB package. Each server runs
in its own process on 127.0.0.1; 32 client threads (keep-alive connections where the
server allows them) GET one path for the duration. Prints requests/s and p99 latency
(medians of the repeats) for repodata.json and for the 1 MB package, for both servers.
The client is Python too, so absolute figures are bounded by it; the comparison is the
point.
"""

from __future__ import annotations

import http.client
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start")


def load(port: int, path: str, clients: int, seconds: float) -> tuple[float, float]:
    """(requests per second, p99 latency in ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        mine: list[float] = []
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                if (
                    response.getheader("Connection", "").lower() == "close"
                    or response.version == 10
                ):
                    connection.close()
            except (OSError, http.client.HTTPException):
                connection.close()
                continue
            mine.append(time.perf_counter() - start)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    return len(latencies) / elapsed, p99


def main() -> None:
    import argparse

    from reconciler.kinds.conda.indexer import index_channel
    from tests.packages import PackageSpec, build_package

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="reconcile-serve-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        channel = work / "chan"
        for i in range(2000):
            build_package(channel, PackageSpec(f"p{i:04d}", "1.0", subdir="linux-64"), ".conda")
        big = PackageSpec(
            "big", "1.0", subdir="linux-64", files={"data.bin": random.Random(1).randbytes(1 << 20)}
        )
        package = build_package(channel, big, ".conda").name
        index_channel(channel)
        (work / "channels.yaml").write_text(
            "version: 1\nchannels:\n  - {name: chan, path: ./chan, subdirs: [linux-64]}\n"
        )
        ours, plain = free_port(), free_port()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "-q",
                    "serve",
                    "-c",
                    str(work / "channels.yaml"),
                    "--port",
                    str(ours),
                ],
                stderr=subprocess.DEVNULL,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(plain),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(work),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(ours)
        wait_for(plain)
        size = (channel / "linux-64" / "repodata.json").stat().st_size
        package_size = (channel / "linux-64" / package).stat().st_size
        print(
            f"repodata.json {size / 1e6:.1f} MB, package {package_size / 1e6:.1f} MB, "
            f"{args.clients} clients, {args.seconds:.0f} s per run, median of {args.repeats}"
        )
        print(f"{'file':16}{'server':24}{'req/s':>10}{'p99 ms':>10}")
        for label, path in (
            ("repodata.json", "/chan/linux-64/repodata.json"),
            ("1 MB package", f"/chan/linux-64/{package}"),
        ):
            for name, port in (("reconcile serve", ours), ("python -m http.server", plain)):
                runs = [load(port, path, args.clients, args.seconds) for _ in range(args.repeats)]
                rate = statistics.median(r[0] for r in runs)
                p99 = statistics.median(r[1] for r in runs)
                print(f"{label:16}{name:24}{rate:10.0f}{p99:10.1f}", flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
