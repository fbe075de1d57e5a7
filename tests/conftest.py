"""Shared fixtures."""

from __future__ import annotations

import itertools
import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.s3_server import UNSET, S3Server, start_s3_server

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


# -- a real S3 server (moto's) on 127.0.0.1 ----------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in its own process, for the whole session (buckets keep tests apart)."""
    with start_s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with this process (and the ones it starts) pointed at it."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


_buckets = itertools.count()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A new, empty bucket of its own."""
    name = f"test-{os.getpid()}-{next(_buckets)}"
    s3.client().create_bucket(Bucket=name)
    return name
