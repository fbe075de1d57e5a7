"""Package metadata readers: ours (reconciler.conda.archive) against py-rattler's.

    python benchmarks/read_package.py          # 500 packages of each format, 3 repeats

Ours returns everything the index needs from one read of the file: index.json
verbatim, about.json, run_exports.json, the paths.json flags, md5, sha256 and
size. py-rattler's readers each open the archive again and return typed objects
(not the verbatim index.json); there is no about.json reader for archives, and
the digests need one more read. The rattler figure below is index + run_exports +
paths (three opens) plus hashing the file, the closest equivalent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ours(path: Path) -> None:
    from reconciler.conda.archive import read_package

    read_package(path)


def rattler_readers(path: Path) -> None:
    import rattler.package as rp

    rp.IndexJson.from_package_archive(path)
    rp.PathsJson.from_package_archive(path)
    with contextlib.suppress(Exception):  # raises when the package has no run_exports.json
        rp.RunExportsJson.from_package_archive(path)
    data = path.read_bytes()
    hashlib.md5(data).hexdigest()
    hashlib.sha256(data).hexdigest()


def main() -> None:
    from tests.packages import PackageSpec, build_package

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths: dict[str, list[Path]] = {".conda": [], ".tar.bz2": []}
        for fmt in paths:
            for i in range(args.n):
                spec = PackageSpec(
                    f"p{i}",
                    "1.0",
                    subdir="linux-64",
                    run_exports={"weak": [f"p{i}"]},
                    files={f"lib/libp{i}.so": bytes(range(256)) * 64},
                )
                paths[fmt].append(build_package(root / fmt.strip("."), spec, fmt))
        readers: dict[str, Callable[[Path], None]] = {
            "ours": ours,
            "py-rattler": rattler_readers,
        }
        print(f"{'format':10}{'reader':12}{'ms/package (median)':>22}")
        for fmt, files in paths.items():
            for label, reader in readers.items():
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for path in files:
                        reader(path)
                    times.append((time.perf_counter() - start) / len(files) * 1000)
                print(f"{fmt:10}{label:12}{statistics.median(times):22.3f}")


if __name__ == "__main__":
    main()
