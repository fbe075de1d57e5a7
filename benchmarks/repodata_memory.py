"""Peak memory of reading upstream repodata: bombs at the size limit, and real-shaped repodata.

    python benchmarks/repodata_memory.py                 # 200,000-record repodata
    python benchmarks/repodata_memory.py --records 50000

Each case runs in a fresh child process that fetches ``linux-64/repodata.json.zst`` over
HTTP (a ``python -m http.server`` process serving a temporary folder) through a conda
mirror's upstream client, and reports the process's peak RSS (``VmHWM``):

- a zstd frame without a declared size that decompresses past the 2 GiB limit (refused once
  the limit is passed: the peak is about the limit, one buffer, no joined copies);
- the same bomb with its size declared in the frame header (refused before decompressing);
- real-shaped repodata of N records (accepted: the peak is the decompressed text plus the
  parsed records).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def peak_mb() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` carries the parent's over a fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str) -> None:
    from reconciler.config.models import Mirror
    from reconciler.errors import ReconcileError
    from reconciler.kinds.conda.upstream import CondaUpstream

    before = peak_mb()
    started = time.perf_counter()
    client = CondaUpstream(Mirror(name="m", source=url, retries=0, timeout=60), None, None)
    try:
        metadata = client.fetch("linux-64", None)
        outcome = f"accepted {len(metadata.repodata.get('packages.conda') or {})} records"
    except ReconcileError as exc:
        outcome = "refused: " + exc.message.split(": ", 1)[1][:70]
    peak = peak_mb()
    print(
        json.dumps(
            {
                "outcome": outcome,
                "seconds": time.perf_counter() - started,
                "peak_mb": peak,
                "baseline_mb": before,
            }
        )
    )


def write_bomb(folder: Path, size: int, declare: bool) -> int:
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=declare)
    path = folder / "linux-64" / "repodata.json.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = b" " * (64 * 1024 * 1024)
    with path.open("wb") as out, compressor.stream_writer(out, size=size if declare else -1) as w:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            w.write(piece)
            written += len(piece)
    return path.stat().st_size


def write_repodata(folder: Path, records: int) -> tuple[int, int]:
    """Repodata shaped like conda-forge's: 3-8 depends, constrains, licences, indented."""
    packages = {}
    for i in range(records):
        name = f"pkg{i % (records // 12 + 1):05d}"
        version = f"{i % 7}.{i % 13}.{i % 5}"
        filename = f"{name}-{version}-py311h{i:08x}_0.conda"
        packages[filename] = {
            "build": f"py311h{i:08x}_0",
            "build_number": 0,
            "depends": [f"dep{(i + k) % 997} >={k}.0" for k in range(3 + i % 6)]
            + ["python >=3.11,<3.12.0a0", "libgcc-ng >=12"],
            "constrains": [f"con{i % 31} >=1"] if i % 3 == 0 else [],
            "license": ["MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-or-later"][i % 4],
            "license_family": ["MIT", "BSD", "APACHE", "GPL3"][i % 4],
            "md5": f"{i:032x}",
            "name": name,
            "sha256": f"{i:064x}",
            "size": 1000 + i,
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + i,
            "version": version,
        }
    data = json.dumps(
        {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": packages},
        indent=1,
    ).encode()
    path = folder / "linux-64" / "repodata.json.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    return len(data), path.stat().st_size


def serve(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


def measure(folder: Path) -> dict[str, object]:
    process, url = serve(folder)
    try:
        run = subprocess.run(
            [sys.executable, __file__, "--child", url], capture_output=True, text=True, check=True
        )
    finally:
        process.terminate()
        process.wait()
    result: dict[str, object] = json.loads(run.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--child", metavar="URL")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from reconciler.transport.http import MAX_REPODATA_BYTES

    limit = MAX_REPODATA_BYTES
    rows = []
    for label, make in (
        ("bomb, size not declared", lambda f: write_bomb(f, limit + (64 << 20), False)),
        ("bomb, size declared", lambda f: write_bomb(f, limit + (64 << 20), True)),
        (f"repodata, {args.records} records", lambda f: write_repodata(f, args.records)),
    ):
        with tempfile.TemporaryDirectory(prefix="repodata-memory-") as tmp:
            sizes = make(Path(tmp))
            result = measure(Path(tmp))
            rows.append((label, sizes, result))
            print(f"{label}: {result}", flush=True)
    print()
    print(f"limit {limit / 2**20:.0f} MiB decompressed")
    print(f"{'case':36}{'compressed MB':>15}{'peak RSS MB':>13}{'seconds':>9}  outcome")
    for label, sizes, result in rows:
        compressed = sizes[1] if isinstance(sizes, tuple) else sizes
        print(
            f"{label:36}{compressed / 1e6:15.1f}{result['peak_mb']:13.0f}"
            f"{result['seconds']:9.1f}  {result['outcome']}"
        )


if __name__ == "__main__":
    main()
