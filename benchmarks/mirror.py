"""Mirror benchmarks.

    python benchmarks/mirror.py plan           # (a) plan against 500,000 upstream records
    python benchmarks/mirror.py download       # (b) active mirror of 2,000 packages over HTTP
    python benchmarks/mirror.py closure        # (c) 200 roots with and without dependencies
    python benchmarks/mirror.py                # all three

(a) generates the repodata of a synthetic upstream subdir (conda-forge linux-64 scale; no
package files needed) and times ``reconcile plan`` for a passive mirror of it with a name
filter and a licence filter, in a fresh process: wall time and peak memory.

(c) generates a 500,000-record upstream with a dependency graph (linux-64 builds per
python version pinned to it, noarch packages needing python, each package needing two
older ones within a version range, a virtual ``__glibc``) and plans a passive mirror of
200 root records (the newest version of 50 names, 4 python builds each) twice in each
repeat: with ``dependencies: true`` and without, in fresh processes. Prints both plan
times and peaks, and the ratio (target: under 2).

(b) builds 2,000 real packages, serves them with nginx (Debian's) on 127.0.0.1, and
times, at each level of parallel downloads (4, 8, 16, 32 by default), our verified
download of all of them (``run_downloads`` into a local store, as apply runs it: size
and sha256 checked, fsynced, renamed into place) next to a plain parallel download of
the same files (requests + a thread pool, no checks) and ``curl --parallel``, each
into an empty folder. Prints MB/s and our ratio to the plain download; medians of the
repeats.
"""

from __future__ import annotations

import argparse
import json
import random
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
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

LICENSES = [
    "MIT",
    "BSD-3-Clause",
    "Apache-2.0",
    "GPL-3.0-only",
    "LGPL-2.1-or-later",
    "MIT OR GPL-2.0-only",
]


def make_upstream_repodata(root: Path, count: int) -> None:
    import orjson

    packages = {}
    names = max(1, count // 20)
    for i in range(count):
        n = i % names
        version = f"{i // names // 10}.{i // names % 10}.0"
        name = f"pkg{n:06d}"
        build = f"h{n:06x}_{i // names}"
        packages[f"{name}-{version}-{build}.conda"] = {
            "name": name,
            "version": version,
            "build": build,
            "build_number": 0,
            "depends": [f"pkg{(n + 1) % names:06d} >=0.1", "python >=3.10"],
            "license": LICENSES[n % len(LICENSES)],
            "md5": f"{i:032x}",
            "sha256": f"{i:064x}",
            "size": 10_000 + i % 5000,
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + i,
        }
    for subdir, records in (("linux-64", packages), ("noarch", {})):
        folder = root / subdir
        folder.mkdir(parents=True)
        data = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": records}
        (folder / "repodata.json").write_bytes(orjson.dumps(data))


def _closure_targets(i: int) -> set[int]:
    """The names of lower index that name ``i`` needs; never GPL-licensed ones."""
    if i == 0:
        return set()
    targets = {i // 7, ((i * 2654435761) % 2**32) % i}
    return {t - 1 if t % len(LICENSES) == 3 else t for t in targets}


def make_closure_repodata(root: Path, count: int) -> list[str]:
    """An upstream of ``count`` records with a dependency graph; returns 50 root names.

    Each name has 20 records. One in ten names is noarch (20 versions, needing
    ``python >=3.8``); the others are linux-64 (5 versions x 4 builds, each pinned to
    one python minor and needing ``__glibc``, which no upstream holds). A package
    needs two older ones: ``pkg(i // 7)`` and a pseudo-random ``pkg(j)``, ``j < i``,
    each at ``>=1.K`` for a K that depends on ``i``. python itself has 40 builds.
    """
    import orjson

    names = max(1, count // 20)
    linux: dict[str, dict[str, object]] = {}
    noarch: dict[str, dict[str, object]] = {}
    for minor in range(8, 12):
        for patch in range(10):
            version = f"3.{minor}.{patch}"
            linux[f"python-{version}-h0_0.conda"] = {
                "name": "python",
                "version": version,
                "build": "h0_0",
                "build_number": 0,
                "depends": ["__glibc >=2.17"],
                "license": "Python-2.0",
                "md5": f"{minor * 100 + patch:032x}",
                "sha256": f"{minor * 100 + patch:064x}",
                "size": 30_000_000,
                "subdir": "linux-64",
                "timestamp": 1_700_000_000_000,
            }
    number = 0
    for n in range(names):
        name = f"pkg{n:06d}"
        needs = []
        for target in sorted(_closure_targets(n)):
            needs.append(f"pkg{target:06d} >=1.{n % 3}.0")
        licence = LICENSES[n % len(LICENSES)]
        if n % 10 == 9:
            builds = [(f"1.{v}.0", "pyh_0", "python >=3.8") for v in range(20)]
        else:
            builds = [
                (f"1.{v}.0", f"py3{m}h{n:06x}_0", f"python >=3.{m},<3.{m + 1}.0a0")
                for v in range(5)
                for m in range(8, 12)
            ]
        for version, build, python in builds:
            number += 1
            subdir = "noarch" if n % 10 == 9 else "linux-64"
            depends = [python, *needs] + (["__glibc >=2.17"] if subdir == "linux-64" else [])
            record = {
                "name": name,
                "version": version,
                "build": build,
                "build_number": 0,
                "depends": depends,
                "license": licence,
                "md5": f"{number:032x}",
                "sha256": f"{number:064x}",
                "size": 10_000 + number % 5000,
                "subdir": subdir,
                "timestamp": 1_700_000_000_000 + number,
            }
            if subdir == "noarch":
                record["noarch"] = "python"
            (noarch if subdir == "noarch" else linux)[f"{name}-{version}-{build}.conda"] = record
    for subdir, records in (("linux-64", linux), ("noarch", noarch)):
        folder = root / subdir
        folder.mkdir(parents=True)
        data = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": records}
        (folder / "repodata.json").write_bytes(orjson.dumps(data))
    # Linux names spread over the graph, none of them GPL-licensed.
    roots = []
    n = 500
    while len(roots) < 50:
        if n % 10 != 9 and n % len(LICENSES) != 3:
            roots.append(f"pkg{n:06d}")
        n += (names - 1000) // 50
    return roots


CLOSURE_CONFIG = """\
version: 1
channels:
  - name: big
    path: ./channel
    subdirs: [linux-64, noarch]
    filters:
      exclude: [{{license: GPL}}]
    mirrors:
      - name: up
        source: ./upstream
        mode: passive
        filters:
          include: [{include}]
          latest: 1
          dependencies: {dependencies}
"""


PLAN_CONFIG = """\
version: 1
channels:
  - name: big
    path: ./channel
    subdirs: [linux-64, noarch]
    filters:
      exclude: [{license: GPL}]
    mirrors:
      - name: up
        source: ./upstream
        mode: passive
        filters:
          include: [{name: "pkg0001*"}]
"""


def plan_child(folder: Path, config: str = "channels.yaml") -> None:
    from memory import PeakMemory

    from reconciler.config.models import load_config
    from reconciler.engine.planner import make_plan
    from reconciler.kinds import REGISTRY

    REGISTRY.kind_named("conda")  # imported before the clock starts
    with PeakMemory() as peak:
        start = time.perf_counter()
        planning = make_plan(load_config(folder / config), REGISTRY, cache_dir=folder / "cache")
        planning.close()
        elapsed = time.perf_counter() - start
    plan = planning.plan
    adds = plan.count("add")
    warnings = sum(len(channel.warnings) for channel in plan.channels)
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.mb, "adds": adds, "warnings": warnings}))


def _run_plan_child(work: Path, config: str = "channels.yaml") -> dict[str, float]:
    run = subprocess.run(
        [sys.executable, __file__, "--plan-child", str(work), "--config", config],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def bench_closure(records: int, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="reconcile-mirror-closure-"))
    try:
        started = time.perf_counter()
        roots = make_closure_repodata(work / "upstream", records)
        size = sum(p.stat().st_size for p in (work / "upstream").glob("*/repodata.json"))
        print(
            f"(c) upstream of {records} records ({size / 1e6:.0f} MB of repodata.json) "
            f"made in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        include = ", ".join(f"{{name: {name}}}" for name in roots)
        for label, dependencies in (("with", "true"), ("without", "false")):
            (work / f"closure-{label}.yaml").write_text(
                CLOSURE_CONFIG.format(include=include, dependencies=dependencies)
            )
        results: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
        for repeat in range(repeats):
            for label in ("without", "with"):
                result = _run_plan_child(work, f"closure-{label}.yaml")
                results[label].append(result)
                print(
                    f"  repeat {repeat + 1}, {label} dependencies: plan {result['seconds']:.2f} s, "
                    f"{result['peak_mb']:.0f} MB, {result['adds']} records selected, "
                    f"{result['warnings']} warnings",
                    flush=True,
                )
        medians = {
            label: statistics.median(r["seconds"] for r in runs) for label, runs in results.items()
        }
        peaks = {label: max(r["peak_mb"] for r in runs) for label, runs in results.items()}
        for label in ("without", "with"):
            print(
                f"(c) plan {label} dependencies, median of {repeats}: {medians[label]:.2f} s, "
                f"peak {peaks[label]:.0f} MB, {results[label][0]['adds']} records selected"
            )
        print(f"(c) ratio with / without: {medians['with'] / medians['without']:.2f} (target: 2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_plan(records: int, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="reconcile-mirror-plan-"))
    try:
        started = time.perf_counter()
        make_upstream_repodata(work / "upstream", records)
        size = (work / "upstream" / "linux-64" / "repodata.json").stat().st_size
        print(
            f"(a) upstream of {records} records ({size / 1e6:.0f} MB repodata.json) "
            f"made in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        (work / "channels.yaml").write_text(PLAN_CONFIG)
        results = []
        for repeat in range(repeats):
            result = _run_plan_child(work)
            results.append(result)
            print(
                f"  repeat {repeat + 1}: plan {result['seconds']:.2f} s, "
                f"{result['peak_mb']:.0f} MB, {result['adds']} records selected",
                flush=True,
            )
        print(
            f"(a) plan, median of {repeats}: "
            f"{statistics.median(r['seconds'] for r in results):.2f} s, "
            f"peak {max(r['peak_mb'] for r in results):.0f} MB (targets: 15 s, 2048 MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_upstream(upstream: Path, count: int) -> dict[str, dict[str, object]]:
    from reconciler.kinds.conda.indexer import index_channel
    from tests.packages import PackageSpec, build_package

    for i in range(count):
        # 64 kB of incompressible bytes per package, so the transfer is what is timed.
        payload = random.Random(i).randbytes(64 * 1024)
        spec = PackageSpec(f"p{i:05d}", "1.0", subdir="linux-64", files={"lib/data.bin": payload})
        build_package(upstream, spec, ".conda")
    index_channel(upstream)
    repodata = json.loads((upstream / "linux-64" / "repodata.json").read_text())
    records: dict[str, dict[str, object]] = repodata["packages.conda"]
    return records


def _ours(url: str, target: Path, records: dict[str, dict[str, object]], parallel: int) -> float:
    """Seconds for ``run_downloads`` into a local store, as apply runs it (verified, atomic)."""
    from reconciler.engine.downloads import DownloadJob, run_downloads
    from reconciler.store.local import LocalStore
    from reconciler.transport.http import Upstream

    store = LocalStore(target)
    client = Upstream(url, target.parent / "state")

    def job(filename: str, record: dict[str, object]) -> DownloadJob:
        size, sha256 = int(record["size"]), str(record["sha256"])  # type: ignore[call-overload]
        key = f"linux-64/{filename}"

        def fetch(out: Any) -> int:
            return client.download(key, out, size, sha256)

        return DownloadJob(key=key, source="up", size=size, fetch=fetch)

    jobs = [job(fn, r) for fn, r in records.items()]
    start = time.perf_counter()
    result = run_downloads(store, jobs, parallel=parallel, check_room=store.check_room)
    elapsed = time.perf_counter() - start
    assert not result.failed, result.failed[:3]
    client.close()
    return elapsed


def _plain(url: str, target: Path, records: dict[str, dict[str, object]], parallel: int) -> float:
    """Seconds for requests + a thread pool writing the files, no checks."""
    import requests

    (target / "linux-64").mkdir(parents=True)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=parallel))

    def fetch(filename: str) -> None:
        with (
            session.get(f"{url}/linux-64/{filename}", stream=True) as response,
            (target / "linux-64" / filename).open("wb") as out,
        ):
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(fetch, records))
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed


def _curl(url: str, target: Path, records: dict[str, dict[str, object]], parallel: int) -> float:
    """Seconds for ``curl --parallel`` (one process, keep-alive connections), no checks."""
    (target / "linux-64").mkdir(parents=True)
    listing = target.parent / f"{target.name}.curl"
    listing.write_text(
        "".join(
            f'url = "{url}/linux-64/{fn}"\noutput = "{target}/linux-64/{fn}"\n' for fn in records
        )
    )
    command = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel"]
    command += ["--parallel-max", str(parallel)]
    start = time.perf_counter()
    subprocess.run([*command, "--config", str(listing)], check=True)
    elapsed = time.perf_counter() - start
    listing.unlink()
    return elapsed


def bench_download(count: int, levels: list[int], repeats: int) -> None:
    from tests.serve.nginx import NGINX, direct_config, free_port, nginx

    if NGINX is None or shutil.which("curl") is None:
        raise SystemExit("needs nginx and curl: apt-get install nginx curl")
    work = Path(tempfile.mkdtemp(prefix="reconcile-mirror-dl-"))
    try:
        upstream = work / "srv" / "upstream"
        records = _build_upstream(upstream, count)
        total = sum(int(r["size"]) for r in records.values())  # type: ignore[call-overload]
        port = free_port()
        url = f"http://127.0.0.1:{port}/upstream"
        tools = {"ours": _ours, "plain": _plain, "curl": _curl}
        print(
            f"(b) {count} packages, {total / 1e6:.0f} MB from nginx on 127.0.0.1; "
            f"parallel downloads {', '.join(map(str, levels))}; median of {repeats}",
            flush=True,
        )
        rates: dict[tuple[str, int], list[float]] = {}
        with nginx(work / "nginx", direct_config(work / "srv", port), port):
            for repeat in range(repeats):
                for level in levels:
                    line = []
                    for name, run in tools.items():
                        target = work / f"{name}-{level}-{repeat}"
                        rate = total / run(url, target, records, level) / 1e6
                        rates.setdefault((name, level), []).append(rate)
                        shutil.rmtree(target)
                        line.append(f"{name} {rate:.1f}")
                    print(f"  repeat {repeat + 1}, parallel {level}: {', '.join(line)} MB/s",
                          flush=True)  # fmt: skip
        print(f"{'parallel':>8}{'ours MB/s':>12}{'plain MB/s':>12}{'ratio':>8}{'curl MB/s':>12}")
        for level in levels:
            ours, plain, curl = (statistics.median(rates[(n, level)]) for n in tools)
            print(f"{level:>8}{ours:>12.1f}{plain:>12.1f}{ours / plain:>8.2f}{curl:>12.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "which", nargs="?", choices=["plan", "download", "closure", "all"], default="all"
    )
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--packages", type=int, default=2_000)
    parser.add_argument(
        "--parallel",
        default="4,8,16,32",
        help="parallel downloads to measure, comma-separated (default: 4,8,16,32)",
    )
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--plan-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="channels.yaml", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_child:
        plan_child(args.plan_child, args.config)
        return
    if args.which in ("plan", "all"):
        bench_plan(args.records, args.repeats)
    if args.which in ("download", "all"):
        bench_download(args.packages, [int(n) for n in args.parallel.split(",")], args.repeats)
    if args.which in ("closure", "all"):
        bench_closure(args.records, args.repeats)


if __name__ == "__main__":
    main()
