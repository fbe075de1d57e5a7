"""``run_exports.json`` (CEP-12): every package's run_exports, never patched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RUN_EXPORTS_VERSION = 1


def build_run_exports(
    subdir: str, run_exports_by_filename: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Every package of ``subdir`` by filename; ``{}`` for a package without run_exports."""
    packages: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for filename in sorted(run_exports_by_filename):
        entry = {"run_exports": dict(run_exports_by_filename[filename] or {})}
        if filename.endswith(".conda"):
            conda[filename] = entry
        elif filename.endswith(".tar.bz2"):
            packages[filename] = entry
    return {
        "info": {"subdir": subdir, "version": RUN_EXPORTS_VERSION},
        "packages": packages,
        "packages.conda": conda,
    }
