"""Plan benchmark: `reconcile plan` on a big local channel, with nothing to do and with changes.

    python benchmarks/plan.py                # 50,000 packages, 1,000 changes, 3 repeats
    python benchmarks/plan.py -n 10000 -c 200

Builds a channel of N real packages over 4 subdirs, applies it once, then times
(each run in a fresh child process, so peak memory is per run):

- plan, nothing to do,
- plan after C new packages were dropped in,

and, as the closest reference, rattler-index re-checking the same unchanged
channel (``rattler.index.index_fs``, which has no dry run). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CONFIG = """\
version: 1
channels:
  - name: big
    path: ./channel
    subdirs: [linux-64, osx-arm64, win-64, noarch]
"""


def run_child(tool: str, folder: Path) -> None:
    import asyncio

    from memory import PeakMemory
    from rattler.index import index_fs

    from reconciler.config.models import load_config
    from reconciler.engine.planner import make_plan
    from reconciler.kinds import REGISTRY

    REGISTRY.kind_named("conda")  # imported before the clock starts
    # Imports happen before the clock starts: the figure is the planning work itself.
    with PeakMemory() as peak:
        start = time.perf_counter()
        if tool == "plan":
            planning = make_plan(
                load_config(folder / "channels.yaml"), REGISTRY, cache_dir=folder / "cache"
            )
            planning.close()
            actions = sum(len(c.actions) for c in planning.plan.channels)
        else:
            asyncio.run(index_fs(folder / "channel", write_zst=True, write_shards=False))
            actions = -1
        elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.mb, "actions": actions}))


def timed(tool: str, folder: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", tool, str(folder)]
    for _attempt in range(3):
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode == 0:
            result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
            return result
        print(f"  ({tool} exited with {run.returncode}; retrying)", flush=True)
    raise SystemExit(f"{tool} failed three times:\n{run.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--packages", type=int, default=50_000)
    parser.add_argument("-c", "--changes", type=int, default=1_000)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], Path(args.child[1]))
        return

    from index import build_synthetic_channel

    from reconciler.config.models import load_config
    from reconciler.engine.planner import make_plan
    from reconciler.kinds import REGISTRY
    from tests.packages import PackageSpec, build_package

    work = Path(tempfile.mkdtemp(prefix="reconcile-plan-bench-"))
    try:
        (work / "channels.yaml").write_text(CONFIG)
        started = time.perf_counter()
        build_synthetic_channel(work / "channel", args.packages)
        print(
            f"built {args.packages} packages in {time.perf_counter() - started:.1f} s", flush=True
        )
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "reconciler", "apply", "-c", str(work / "channels.yaml")],
            check=True,
            capture_output=True,
        )
        print(f"first apply took {time.perf_counter() - started:.1f} s", flush=True)
        planning = make_plan(load_config(work / "channels.yaml"), REGISTRY)
        planning.close()
        assert not planning.plan.has_changes

        # rattler-index rewrites the index its own way: give it its own copy, and
        # time its runs after the first (which converts our index to its own).
        reference = work / "reference"
        reference.mkdir()
        shutil.copytree(work / "channel", reference / "channel")
        timed("rattler", reference)
        rows: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for label, tool, folder in (
                ("plan, no changes", "plan", work),
                ("rattler-index, no changes", "rattler", reference),
            ):
                result = timed(tool, folder)
                rows.setdefault(label, []).append(result)
                print(
                    f"  repeat {repeat + 1}: {label:32} {result['seconds']:7.3f} s "
                    f"{result['peak_mb']:6.0f} MB",
                    flush=True,
                )

        for i in range(args.changes):
            spec = PackageSpec(f"change{i:05d}", "1.0", subdir="linux-64")
            build_package(work / "channel", spec, ".conda")
        label = f"plan, {args.changes} new packages"
        for repeat in range(args.repeats):
            result = timed("plan", work)
            rows.setdefault(label, []).append(result)
            print(
                f"  repeat {repeat + 1}: {label:32} {result['seconds']:7.3f} s "
                f"{result['peak_mb']:6.0f} MB ({result['actions']:.0f} actions)",
                flush=True,
            )

        print()
        print(f"{args.packages} packages, median of {args.repeats}:")
        print(f"{'':36}{'seconds':>10}{'peak MB':>10}")
        for label, results in rows.items():
            seconds = statistics.median(r["seconds"] for r in results)
            peak = max(r["peak_mb"] for r in results)
            print(f"{label:36}{seconds:10.3f}{peak:10.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
