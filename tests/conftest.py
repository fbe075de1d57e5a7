"""Shared fixtures."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a channels.yaml (dedented) into a temporary folder and return its path."""

    def write(text: str, name: str = "channels.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI points the ``reconciler`` logger at stderr only; undo that after each test,
    so a later test's ``caplog`` still sees the messages."""
    logger = logging.getLogger("reconciler")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(autouse=True)
def _private_http_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own HTTP cache (never the user's), also in the processes it starts."""
    monkeypatch.setenv("RECONCILE_CACHE_DIR", str(tmp_path_factory.mktemp("http-cache")))
