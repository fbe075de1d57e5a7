"""Index benchmark: conda-reconcile against rattler-index on the same synthetic channel.

    python benchmarks/index.py                 # 10,000 packages over 4 subdirs, 3 repeats
    python benchmarks/index.py -n 2000 -r 5

Builds a channel of real packages (70% ``.conda``), then times, in one run and on
fresh copies of the same channel:

- cold: index a channel that has never been indexed,
- no-op: re-index it with nothing changed,
- add-one: re-index after one new package was dropped in,

for ``reconcile index`` (in-process ``index_channel``) and ``rattler.index.index_fs``
(repodata.json + .zst, no shards, as our default writes no shards either). Each
timed run happens in a child process whose memory (the resident size of it and its
workers, sampled together) is measured per run. Prints medians and the ratio ours/rattler.
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

SUBDIRS = ("noarch", "linux-64", "osx-arm64", "win-64")


def build_synthetic_channel(root: Path, count: int, conda_share: float = 0.7) -> None:
    """``count`` packages spread over :data:`SUBDIRS`, ~10 versions per name."""
    from tests.packages import PackageSpec, build_package

    per_name = 10
    names = max(1, count // per_name)
    made = 0
    for n in range(names):
        subdir = SUBDIRS[n % len(SUBDIRS)]
        name = f"pkg{n:05d}"
        for v in range(per_name):
            if made >= count:
                return
            depends = [f"pkg{(n + k) % names:05d} >=0.{k}" for k in (1, 2) if names > 2]
            spec = PackageSpec(
                name,
                f"1.{v}.0",
                build=f"h{n:04x}_{v}",
                build_number=v,
                subdir=subdir,
                depends=depends,
                noarch="python" if subdir == "noarch" else None,
                run_exports={"weak": [f"{name} >=1.{v}"]} if v % 2 else None,
                timestamp=1_700_000_000_000 + made,
            )
            fmt = ".conda" if (made % 10) < conda_share * 10 else ".tar.bz2"
            build_package(root, spec, fmt)
            made += 1


def extra_package(root: Path, index: int) -> None:
    from tests.packages import PackageSpec, build_package

    build_package(root, PackageSpec("added", f"9.{index}", subdir="linux-64"), ".conda")


# -- child process: one timed run -------------------------------------------------------


def run_child(tool: str, channel: Path) -> None:
    import asyncio

    from memory import PeakMemory
    from rattler.index import index_fs

    from reconciler.kinds.conda.indexer import index_channel

    # Imports happen before the clock starts: both tools are timed on the work alone.
    with PeakMemory() as peak:
        start = time.perf_counter()
        if tool == "ours":
            index_channel(channel)
        else:
            asyncio.run(index_fs(channel, write_zst=True, write_shards=False))
        elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.mb}))


def timed(tool: str, channel: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", tool, str(channel)]
    for _attempt in range(3):
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode == 0:
            result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
            return result
        # rattler's index_fs has been seen to die with SIGSEGV now and then; say so, retry.
        print(f"  ({tool} exited with {run.returncode}; retrying)", flush=True)
    raise SystemExit(f"{tool} failed three times on {channel}:\n{run.stderr}")


# -- driver -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--packages", type=int, default=10_000)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], Path(args.child[1]))
        return

    work = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    try:
        source = work / "source"
        started = time.perf_counter()
        build_synthetic_channel(source, args.packages)
        print(
            f"built {args.packages} packages over {len(SUBDIRS)} subdirs "
            f"in {time.perf_counter() - started:.1f} s; {os.cpu_count()} cores",
            flush=True,
        )
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for tool in ("ours", "rattler"):
                channel = work / f"{tool}-{repeat}"
                shutil.copytree(source, channel)
                for phase in ("cold", "no-op", "add-one"):
                    if phase == "add-one":
                        extra_package(channel, repeat)
                    result = timed(tool, channel)
                    results.setdefault((tool, phase), []).append(result)
                    print(
                        f"  repeat {repeat + 1}: {tool:8} {phase:8} "
                        f"{result['seconds']:7.3f} s  {result['peak_mb']:6.0f} MB",
                        flush=True,
                    )
                shutil.rmtree(channel)

        print()
        print(f"{args.packages} packages, median of {args.repeats}:")
        header = ("phase", "ours s", "rattler s", "ratio", "ours MB", "rattler MB")
        print("{:10}{:>10}{:>12}{:>8}{:>10}{:>12}".format(*header))
        for phase in ("cold", "no-op", "add-one"):
            ours = results[("ours", phase)]
            theirs = results[("rattler", phase)]
            ours_s = statistics.median(r["seconds"] for r in ours)
            theirs_s = statistics.median(r["seconds"] for r in theirs)
            ours_mb = max(r["peak_mb"] for r in ours)
            theirs_mb = max(r["peak_mb"] for r in theirs)
            print(
                f"{phase:10}{ours_s:10.3f}{theirs_s:12.3f}{ours_s / theirs_s:8.2f}"
                f"{ours_mb:10.0f}{theirs_mb:12.0f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
