r"""Index benchmark: conda-reconcile against rattler-index on the same synthetic channel.

    python benchmarks/index.py                 # 10,000 packages over 4 subdirs, 3 repeats
    python benchmarks/index.py -n 2000 -r 5
    python benchmarks/index.py -n 50000 --source /tmp/c50k   # build once, reuse after
    python benchmarks/index.py --conda-source /tmp/conda-src   # conda-index as well

Builds a channel of real packages (70% ``.conda``), then times, in one run and on
fresh copies of the same channel:

- cold: index a channel that has never been indexed,
- no-op: re-index it with nothing changed,
- add-one: re-index after one new package was dropped in,

for ``reconcile index`` (in-process ``index_channel``), ``rattler.index.index_fs``
(repodata.json + .zst, no shards, as our default writes no shards either) and, when
``conda_index`` and ``conda`` can be imported, conda-index's ``ChannelIndex``. Each
timed run happens in a child process whose memory (the resident size of it and its
workers, sampled together) is measured per run. Prints medians and the ratios ours/tool.

conda-index needs ``conda`` importable, and current conda is not published on PyPI.
To measure it, fetch conda's source at a release tag, install conda-index and conda's
runtime dependencies (the ``dependencies`` of conda's ``pyproject.toml`` at that tag)
into this environment with pip, and pass the folder that contains the ``conda/``
package as ``--conda-source``; the timed child processes then import conda from it::

    git clone --depth 1 --branch 26.7.1 https://github.com/conda/conda /tmp/conda-src
    printf '__version__ = "26.7.1"\n' > /tmp/conda-src/conda/_version.py
    pip install conda-index archspec boltons charset-normalizer conda-package-handling \
        distro frozendict msgpack packaging platformdirs pluggy pycosat requests \
        setuptools tqdm truststore
    python benchmarks/index.py --conda-source /tmp/conda-src

``conda/_version.py`` is what a pip install of conda would generate; without it conda
asks setuptools_scm for its version, or calls itself ``0.0.0.dev0+placeholder``.
``menuinst`` (not on PyPI) and ``conda-libmamba-solver`` can be left out: indexing
imports neither.
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


def use_conda_source(source: Path) -> None:
    """Import ``conda`` from ``source``, a checkout of conda's source, from now on."""
    if not (source / "conda" / "__init__.py").is_file():
        raise SystemExit(f"--conda-source {source}: no conda/__init__.py in it")
    # After this repository's own folders (a conda checkout has a ``tests`` package of
    # its own), before site-packages. conda-index's spawned workers inherit sys.path.
    sys.path.insert(2, str(source))


def conda_index_missing() -> str | None:
    """Why conda-index cannot be measured here, or None when it can."""
    try:
        # current_repodata, which ChannelIndex uses, imports the most of conda (its solver).
        import conda  # noqa: F401
        import conda_index.index.current_repodata  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not importable"
    return None


def run_child(tool: str, channel: Path) -> None:
    import asyncio

    from memory import PeakMemory
    from rattler.index import index_fs

    from reconciler.kinds.conda.indexer import index_channel

    if tool == "conda-index":
        from conda_index.index import ChannelIndex

    # Imports happen before the clock starts: every tool is timed on the work alone.
    with PeakMemory() as peak:
        start = time.perf_counter()
        if tool == "ours":
            index_channel(channel)
        elif tool == "conda-index":
            # The outputs ours writes by default: .zst, run_exports, current_repodata,
            # channeldata; no .bz2.
            index = ChannelIndex(
                channel,
                channel.name,
                write_bz2=False,
                write_zst=True,
                write_run_exports=True,
                write_current_repodata=True,
            )
            index.index(patch_generator=None)
            index.update_channeldata()
        else:
            asyncio.run(index_fs(channel, write_zst=True, write_shards=False))
        elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_mb": peak.mb}))


def timed(tool: str, channel: Path, conda_source: Path | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", tool, str(channel)]
    if conda_source is not None:
        command += ["--conda-source", str(conda_source)]
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
    parser.add_argument(
        "--source", type=Path, help="build the channel here once and reuse it (kept)"
    )
    parser.add_argument(
        "--conda-source",
        type=Path,
        metavar="DIR",
        help="a checkout of conda's source (holding conda/) to import conda from, "
        "so that conda-index can be measured",
    )
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.conda_source is not None:
        args.conda_source = args.conda_source.resolve()
        use_conda_source(args.conda_source)
    if args.child:
        run_child(args.child[0], Path(args.child[1]))
        return

    tools = ["ours", "rattler"]
    missing = conda_index_missing()
    if missing:
        hint = "" if args.conda_source else "; see --conda-source"
        print(f"conda-index skipped: {missing} (it needs conda itself{hint})", flush=True)
    else:
        from importlib.metadata import version

        import conda

        print(
            f"conda-index {version('conda-index')} with conda {conda.__version__} "
            f"from {Path(conda.__file__).parent.parent}",
            flush=True,
        )
        tools.append("conda-index")
    work = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    try:
        source = args.source or work / "source"
        marker = source / ".built"
        if args.source is None or not marker.exists():
            started = time.perf_counter()
            build_synthetic_channel(source, args.packages)
            print(
                f"built {args.packages} packages over {len(SUBDIRS)} subdirs "
                f"in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            marker.write_text(f"{args.packages}\n")
        elif int(marker.read_text()) != args.packages:
            raise SystemExit(f"{source} holds {marker.read_text().strip()} packages, not -n")
        print(f"{os.cpu_count()} cores", flush=True)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for tool in tools:
                channel = work / f"{tool}-{repeat}"
                shutil.copytree(source, channel, ignore=shutil.ignore_patterns(".built"))
                for phase in ("cold", "no-op", "add-one"):
                    if phase == "add-one":
                        extra_package(channel, repeat)
                    result = timed(tool, channel, args.conda_source)
                    results.setdefault((tool, phase), []).append(result)
                    print(
                        f"  repeat {repeat + 1}: {tool:11} {phase:8} "
                        f"{result['seconds']:7.3f} s  {result['peak_mb']:6.0f} MB",
                        flush=True,
                    )
                shutil.rmtree(channel)

        print()
        print(f"{args.packages} packages, median of {args.repeats}:")
        header = ("phase", "tool", "seconds", "ours/tool", "peak MB")
        print("{:10}{:12}{:>10}{:>11}{:>9}".format(*header))
        for phase in ("cold", "no-op", "add-one"):
            ours_s = statistics.median(r["seconds"] for r in results[("ours", phase)])
            for tool in tools:
                runs = results[(tool, phase)]
                seconds = statistics.median(r["seconds"] for r in runs)
                peak = max(r["peak_mb"] for r in runs)
                print(f"{phase:10}{tool:12}{seconds:10.3f}{ours_s / seconds:11.2f}{peak:9.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
