"""Plan of a passive mirror of a conda-forge-sized upstream, next to rattler's sparse floor.

    python benchmarks/plan_upstream.py                      # 100k, 500k and 1.1M records
    python benchmarks/plan_upstream.py --records 100000 --repeats 3
    python benchmarks/plan_upstream.py --records 1100000 --rate 50m   # a 50 MB/s link
    python benchmarks/plan_upstream.py --records 100000 --every-name  # and a mirror of all
    python benchmarks/plan_upstream.py --records 100000 --dependencies  # and their closure

Generates conda-forge-like repodata (linux-64 and noarch; 3-8 depends, constrains,
realistic licences and name counts, indented JSON, `.zst` beside `.json`) served by nginx
(Debian's, a process of its own; a `python -m http.server` process when nginx is missing),
and times, each in a fresh process with its peak RSS (VmHWM):

- ``reconcile plan`` of a passive mirror with an include list of names, a licence exclude
  and ``latest: 3`` (a fresh cache: the upstream answers 200);
- the same plan again (the upstream answers 304 and the configuration did not change);
- with ``--every-name``, the same plan without the include list (every record is read,
  checked and filtered: a mirror of everything), in a fresh cache;
- with ``--dependencies``, the same plan with ``dependencies: true`` (the generator's
  dependencies name random packages, so the closure takes in most of the upstream: slow
  past 100k records);
- rattler's ``SparseRepoData`` loading the same names from the same files (the floor: it
  parses only the records of those names);
- ``orjson`` parsing the whole document (what reading every record costs);
- the ``zstd`` tool decompressing both ``.zst`` bodies (what the floor, reading
  uncompressed files, does not pay; skipped with a message without ``zstd``).

Medians of ``--repeats``; ratios to the sparse floor. ``--rate`` has nginx send each
response at most that fast (``limit_rate``), as a link slower than loopback would.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LICENCES = [
    ("MIT", "MIT"),
    ("BSD-3-Clause", "BSD"),
    ("Apache-2.0", "APACHE"),
    ("GPL-3.0-or-later", "GPL3"),
    ("GPL-2.0-only", "GPL2"),
    ("LGPL-2.1-or-later", "LGPL"),
    ("MPL-2.0", "MOZILLA"),
    ("PSF-2.0", "PSF"),
    ("BSD-2-Clause", "BSD"),
    ("Zlib", "OTHER"),
]
SELECTED_NAMES = 400  # names in the include list (a big but realistic selection)


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def generate(folder: Path, records: int, seed: int = 7) -> list[str]:
    """linux-64 and noarch repodata of ``records`` records; returns every package name."""
    import zstandard

    rng = random.Random(seed)
    names = [f"pkg-{i:06d}" for i in range(max(50, records // 25))]
    per_subdir = {"linux-64": int(records * 0.7), "noarch": records - int(records * 0.7)}
    for subdir, count in per_subdir.items():
        packages = {}
        for i in range(count):
            name = names[rng.randrange(len(names))]
            version = f"{rng.randrange(30)}.{rng.randrange(20)}.{rng.randrange(10)}"
            build = f"py{rng.choice(['39', '310', '311', '312'])}h{rng.getrandbits(32):08x}_{i % 3}"
            licence, family = rng.choice(LICENCES)
            depends = [
                f"{names[rng.randrange(len(names))]} >={rng.randrange(5)}.{rng.randrange(9)}"
                for _ in range(rng.randint(3, 8))
            ]
            record = {
                "build": build,
                "build_number": i % 3,
                "depends": depends,
                "license": licence,
                "license_family": family,
                "md5": f"{rng.getrandbits(128):032x}",
                "name": name,
                "sha256": f"{rng.getrandbits(256):064x}",
                "size": rng.randrange(10_000, 50_000_000),
                "subdir": subdir,
                "timestamp": 1_600_000_000_000 + rng.randrange(200_000_000_000),
                "version": version,
            }
            if rng.random() < 0.3:
                record["constrains"] = [f"{names[rng.randrange(len(names))]} <{rng.randrange(9)}"]
            if subdir == "noarch":
                record["noarch"] = "python"
            packages[f"{name}-{version}-{build}.conda"] = record
        data = json.dumps(
            {
                "info": {"subdir": subdir},
                "packages": {},
                "packages.conda": packages,
                "removed": [],
                "repodata_version": 1,
            },
            indent=1,
            sort_keys=True,
        ).encode()
        target = folder / subdir
        target.mkdir(parents=True, exist_ok=True)
        (target / "repodata.json").write_bytes(data)
        (target / "repodata.json.zst").write_bytes(
            zstandard.ZstdCompressor(level=10, write_content_size=True).compress(data)
        )
    return names


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(folder: Path, work: Path, rate: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if rate is not None and not nginx:
        raise SystemExit("--rate needs nginx")
    limit = f"limit_rate {rate};" if rate else ""
    if nginx:
        conf = work / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};
  uwsgi_temp_path {work}; scgi_temp_path {work};
  sendfile on;
  server {{ listen 127.0.0.1:{port}; root {folder}; etag on; {limit} }}
}}
"""
        )
        process = subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL)
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    for _ in range(200):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


def config_text(
    url: str, names: list[str] | None, channel: Path, *, dependencies: bool = False
) -> str:
    """The benchmark's channel; ``names``: the mirror's include list (None: none, every
    name); ``dependencies``: the mirror also takes what the included records need."""
    include = (
        ""
        if names is None
        else "\n          include: [" + ", ".join(f"{{name: {n}}}" for n in names) + "]"
    )
    return f"""version: 1
channels:
  - name: big
    path: {channel}
    subdirs: [linux-64, noarch]
    filters:
      exclude:
        - license: GPL
    mirrors:
      - name: forge
        source: {url}
        mode: passive
        timeout: 300
        filters:{include}
          latest: 3
          dependencies: {str(dependencies).lower()}
"""


# -- the children: each measures itself ---------------------------------------------------


def child_plan(config: str, cache: str) -> None:
    from reconciler.config.models import load_config
    from reconciler.engine.planner import make_plan
    from reconciler.kinds import REGISTRY

    REGISTRY.kind_named("conda")  # imports before the clock starts
    started = time.perf_counter()
    planning = make_plan(load_config(config), REGISTRY, cache_dir=Path(cache))
    planning.close()
    actions = sum(len(c.actions) for c in planning.plan.channels)
    print(
        json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "n": actions})
    )


def child_sparse(folder: str, names_json: str) -> None:
    import rattler

    names = json.loads(names_json)
    started = time.perf_counter()
    found = 0
    for subdir in ("linux-64", "noarch"):
        sparse = rattler.SparseRepoData(
            rattler.Channel("bench"), subdir, Path(folder) / subdir / "repodata.json"
        )
        for name in names:
            found += len(sparse.load_records(rattler.PackageName(name)))
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "n": found}))


def child_orjson(folder: str) -> None:
    import orjson

    started = time.perf_counter()
    count = 0
    for subdir in ("linux-64", "noarch"):
        data = orjson.loads((Path(folder) / subdir / "repodata.json").read_bytes())
        count += len(data["packages.conda"])
        del data
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "n": count}))


def child_zstd(folder: str) -> None:
    """The zstd tool decompressing both bodies one after the other: what reading the
    upstream costs before any JSON is looked at (the floor reads uncompressed files)."""
    import resource

    started = time.perf_counter()
    for subdir in ("linux-64", "noarch"):
        subprocess.run(
            ["zstd", "-q", "-d", "-c", str(Path(folder) / subdir / "repodata.json.zst")],
            stdout=subprocess.DEVNULL,
            check=True,
        )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak, "n": 2}))


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench(
    records: int,
    repeats: int,
    rate: str | None = None,
    every_name: bool = False,
    dependencies: bool = False,
) -> list[tuple[str, float, float]]:
    work = Path(tempfile.mkdtemp(prefix="plan-upstream-"))
    try:
        upstream = work / "upstream"
        started = time.perf_counter()
        names = generate(upstream, records)
        print(f"{records} records generated in {time.perf_counter() - started:.0f} s", flush=True)
        selected = random.Random(1).sample(names, min(SELECTED_NAMES, len(names)))
        process, url = serve(upstream, work, rate)
        rows: dict[str, list[dict[str, float]]] = {}
        try:
            config = work / "channels.yaml"
            config.write_text(config_text(url, selected, work / "channel"))
            everything = work / "every-name.yaml"
            everything.write_text(config_text(url, None, work / "channel"))
            closure = work / "dependencies.yaml"
            closure.write_text(config_text(url, selected, work / "channel", dependencies=True))
            for repeat in range(repeats):
                cache = work / f"cache-{repeat}"
                for label, args in (
                    ("plan (upstream 200)", ("plan", str(config), str(cache))),
                    ("plan again (upstream 304)", ("plan", str(config), str(cache))),
                    *(
                        [
                            (
                                "plan, every name (no include rule)",
                                ("plan", str(everything), str(work / f"cache-all-{repeat}")),
                            )
                        ]
                        if every_name
                        else []
                    ),
                    *(
                        [
                            (
                                "plan, dependencies: true",
                                ("plan", str(closure), str(work / f"cache-deps-{repeat}")),
                            )
                        ]
                        if dependencies
                        else []
                    ),
                    (
                        "rattler SparseRepoData, same names",
                        ("sparse", str(upstream), json.dumps(selected)),
                    ),
                    ("orjson, whole document", ("orjson", str(upstream))),
                    *(
                        [("zstd -d of both .zst bodies (tool)", ("zstd", str(upstream)))]
                        if shutil.which("zstd")
                        else []
                    ),
                ):
                    result = run_child(*args)
                    rows.setdefault(label, []).append(result)
                    print(
                        f"  {label:38} {result['seconds']:8.2f} s {result['peak_mb']:7.0f} MB",
                        flush=True,
                    )
        finally:
            process.terminate()
            process.wait()
        floor = statistics.median(r["seconds"] for r in rows["rattler SparseRepoData, same names"])
        return [
            (
                label,
                statistics.median(r["seconds"] for r in results),
                max(r["peak_mb"] for r in results),
            )
            for label, results in rows.items()
        ] + [("(floor)", floor, 0.0)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rate", help="nginx limit_rate per connection (e.g. 50m: 50 MB/s), as a slower link"
    )
    parser.add_argument(
        "--every-name",
        action="store_true",
        help="also plan the mirror without its include list (every record read)",
    )
    parser.add_argument(
        "--dependencies",
        action="store_true",
        help="also plan the mirror with dependencies: true (its closure)",
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {
            "plan": child_plan,
            "sparse": child_sparse,
            "orjson": child_orjson,
            "zstd": child_zstd,
        }
        children[kind](*rest)
        return
    if not shutil.which("zstd"):
        print("zstd not found (apt-get install zstd): its row is skipped", flush=True)
    for records in args.records or [100_000, 500_000, 1_100_000]:
        table = bench(records, args.repeats, args.rate, args.every_name, args.dependencies)
        floor = next(seconds for label, seconds, _ in table if label == "(floor)")
        at = f", served at {args.rate}B/s" if args.rate else ""
        print(f"\n{records} records, median of {args.repeats}{at}:")
        print(f"{'':40}{'seconds':>10}{'peak MB':>10}{'x floor':>9}")
        for label, seconds, peak in table:
            if label != "(floor)":
                print(f"{label:40}{seconds:10.2f}{peak:10.0f}{seconds / floor:9.2f}")
        print(flush=True)


if __name__ == "__main__":
    main()
