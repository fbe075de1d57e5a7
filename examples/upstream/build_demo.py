"""Rebuild ``examples/upstream/demo``: a small upstream channel the example mirrors offline.

    python examples/upstream/build_demo.py

The packages are real (tiny) ``.conda`` and ``.tar.bz2`` archives; the script
indexes the folder with ``reconcile index`` afterwards. The output is committed,
so the example works without running this.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from reconciler.kinds.conda.indexer import index_channel  # noqa: E402
from tests.packages import PackageSpec, build_package  # noqa: E402

DAY_MS = 86_400_000
JAN_2024_MS = 1_704_067_200_000


def specs() -> list[tuple[PackageSpec, str]]:
    def at(days: int) -> int:
        return JAN_2024_MS + days * DAY_MS

    return [
        (
            PackageSpec("demo-lib", "1.0", build="pyhd_0", noarch="python", timestamp=at(10)),
            ".tar.bz2",
        ),
        (
            PackageSpec("demo-lib", "1.1", build="pyhd_0", noarch="python", timestamp=at(100)),
            ".conda",
        ),
        (
            PackageSpec("demo-lib", "1.2", build="pyhd_0", noarch="python", timestamp=at(400)),
            ".conda",
        ),
        (
            PackageSpec(
                "demo-data",
                "2024.1",
                noarch="generic",
                license="CC-BY-4.0",
                license_family="CC",
                timestamp=at(20),
            ),
            ".conda",
        ),
        (
            PackageSpec(
                "demo-core",
                "0.9",
                subdir="linux-64",
                license="GPL-3.0-only",
                license_family="GPL3",
                timestamp=at(30),
            ),
            ".conda",
        ),
        (
            PackageSpec(
                "libgcc-ng",
                "13.2.0",
                subdir="linux-64",
                license="GPL-3.0-only WITH GCC-exception-3.1",
                license_family="GPL",
                timestamp=at(5),
            ),
            ".conda",
        ),
        (
            PackageSpec(
                "demo-app",
                "1.0",
                build="py311_0",
                subdir="linux-64",
                depends=["demo-lib >=1.0", "libgcc-ng >=13"],
                timestamp=at(50),
            ),
            ".tar.bz2",
        ),
        (
            PackageSpec(
                "demo-app",
                "2.0",
                build="py311_0",
                subdir="linux-64",
                depends=["demo-lib >=1.1", "libgcc-ng >=13"],
                run_exports={"weak": ["demo-app >=2"]},
                timestamp=at(200),
            ),
            ".conda",
        ),
        (
            PackageSpec(
                "demo-app",
                "2.0",
                build="py311_0",
                subdir="osx-arm64",
                depends=["demo-lib >=1.1"],
                timestamp=at(200),
            ),
            ".conda",
        ),
        (
            PackageSpec(
                "demo-tool",
                "0.3",
                build="py311_1",
                subdir="linux-64",
                depends=["demo-lib"],
                timestamp=at(300),
            ),
            ".conda",
        ),
    ]


def main() -> None:
    target = HERE / "demo"
    shutil.rmtree(target, ignore_errors=True)
    for spec, fmt in specs():
        build_package(target, spec, fmt)
    result = index_channel(target, channel_name="demo")
    print(f"{target}: {result.summary()}")
    shutil.rmtree(target / ".reconciler", ignore_errors=True)


if __name__ == "__main__":
    main()
