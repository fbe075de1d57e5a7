"""Example repodata hotfix: a Python patch generator.

conda-reconcile calls ``_patch_repodata(repodata, subdir)`` for every subdir and
applies the instructions it returns (the same format as patch_instructions.json).
"""

from __future__ import annotations

from typing import Any


def _patch_repodata(repodata: dict[str, Any], subdir: str) -> dict[str, Any]:
    packages: dict[str, dict[str, Any]] = {}
    for filename, record in repodata.get("packages", {}).items():
        # Old builds of "demo-lib" forgot their zlib pin; tighten it.
        if record["name"] == "demo-lib" and "zlib" in record.get("depends", []):
            depends = [d for d in record["depends"] if d != "zlib"]
            packages[filename] = {"depends": [*depends, "zlib >=1.2.13,<2"]}
    return {
        "patch_instructions_version": 1,
        "packages": packages,
        "packages.conda": {},
        "revoke": [],
        "remove": [],
    }
