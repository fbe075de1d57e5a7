"""Seeing which upstream repodata the planner read through the window."""

from __future__ import annotations

from typing import Any

import pytest


def spy_window_scans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each window read of a ``.zst`` repodata body gave, in order (a ``Scanned``,
    or None where the document had to be read whole)."""
    from reconciler.conda import window_scan

    results: list[Any] = []
    real = window_scan.scan

    def spying(*args: Any) -> Any:
        found = real(*args)
        results.append(found)
        return found

    monkeypatch.setattr(window_scan, "scan", spying)
    return results
