"""Drive the real pip in a subprocess against an index on 127.0.0.1.

pip is the client a PyPI mirror must satisfy, so tests ask pip itself rather than
re-implementing its choices. The runs are kept offline: only loopback index URLs
are accepted, configuration files and ``PIP_*`` variables are ignored (``--isolated``
and a cleaned environment), proxies are bypassed for loopback, and retries are off so
that a failing server fails fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from pathlib import Path

from tests.pypi.builder import normalize

PIP_TIMEOUT = 120.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class PipError(AssertionError):
    """pip exited non-zero; carries its output for assertions on the reason."""

    def __init__(self, command: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(
            f"pip exited {returncode}: {' '.join(command)}\n--- stderr ---\n{stderr}"
            f"\n--- stdout ---\n{stdout}"
        )
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def pip_env() -> dict[str, str]:
    """The environment for pip: no ``PIP_*`` settings (a find-links or index from the
    machine would leak in), no config file, no proxy for loopback."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("PIP_") and key.lower() not in _PROXY_VARIABLES
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        NO_PROXY="127.0.0.1,localhost,::1",
        no_proxy="127.0.0.1,localhost,::1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _check_loopback(index_url: str) -> None:
    host = urllib.parse.urlsplit(index_url).hostname
    if host not in _LOOPBACK:
        raise ValueError(f"tests only use indexes on this machine, not {index_url}")


def run_pip(*args: str, timeout: float = PIP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pip <args>`` with the offline options; raise :class:`PipError`
    with pip's output if it fails."""
    command = [
        sys.executable,
        "-m",
        "pip",
        *args,
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--no-color",
        "--progress-bar",
        "off",
        "--retries",
        "0",
        "--timeout",
        "30",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=pip_env(), timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise PipError(command, result.returncode, result.stdout, result.stderr)
    return result


def installed_distributions(target: Path) -> dict[str, str]:
    """Normalized name to version of every distribution installed in ``target``."""
    found: dict[str, str] = {}
    for metadata in sorted(target.glob("*.dist-info/METADATA")):
        headers = BytesHeaderParser().parsebytes(metadata.read_bytes())
        found[normalize(headers["Name"])] = headers["Version"]
    return found


def pip_install(
    index_url: str,
    *requirements: str,
    target: Path,
    extra_args: Sequence[str] = (),
    timeout: float = PIP_TIMEOUT,
) -> dict[str, str]:
    """``pip install --target`` from ``index_url`` only; returns what ``target`` then
    holds, as normalized name to version."""
    _check_loopback(index_url)
    run_pip(
        "install",
        "--index-url",
        index_url,
        "--target",
        str(target),
        *extra_args,
        *requirements,
        timeout=timeout,
    )
    return installed_distributions(target)


_DELIVERED = re.compile(
    r"^\s*(?:Saved|File was already downloaded) (?P<path>.+?)\s*$", re.MULTILINE
)


def pip_download(
    index_url: str,
    *requirements: str,
    dest: Path,
    extra_args: Sequence[str] = (),
    timeout: float = PIP_TIMEOUT,
) -> list[str]:
    """``pip download -d dest`` from ``index_url`` only; returns the sorted filenames
    pip delivered (saved now, or found already there)."""
    _check_loopback(index_url)
    result = run_pip(
        "download",
        "--index-url",
        index_url,
        "--dest",
        str(dest),
        *extra_args,
        *requirements,
        timeout=timeout,
    )
    return sorted({Path(match["path"]).name for match in _DELIVERED.finditer(result.stdout)})
