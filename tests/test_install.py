"""The wheel, installed the ways users install it, runs the README's example.

The wheel is built from this checkout as a release builds it; each install goes into a
new environment, and the example runs from a copy of examples/ outside the source tree,
so nothing can import the checkout instead of the installed package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_versioning import wheel_version


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith("UV_")
    }
    env.update(extra)
    return env


def run(
    argv: list[str | Path], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    process = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, f"{argv}\n{process.stdout}\n{process.stderr}"
    return process


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, REPO_ROOT], out)
    (built,) = out.glob("conda_reconcile-*-py3-none-any.whl")
    return built


def example_copy(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(
        REPO_ROOT / "examples",
        work / "examples",
        ignore=shutil.ignore_patterns("channels", ".reconciler"),
    )
    assert not work.resolve().is_relative_to(REPO_ROOT)
    return work


def run_readme_example(reconcile: Path, work: Path) -> None:
    """`reconcile apply -c examples/channels.yaml`, twice: the second has nothing to do."""
    first = run([reconcile, "apply", "-c", "examples/channels.yaml"], work)
    assert re.search(r"^Apply complete: [1-9]\d* added", first.stdout, re.MULTILINE), first.stdout
    channels = work / "examples" / "channels"
    for index in (
        "internal/linux-64/repodata.json",
        "internal/noarch/repodata.json",
        "scratch/noarch/repodata.json",
        "pypi/simple/index.json",
    ):
        assert (channels / index).is_file(), index
    assert list((channels / "internal").glob("*/demo-app-*"))  # mirrored packages
    second = run([reconcile, "apply", "-c", "examples/channels.yaml"], work)
    assert second.stdout.splitlines()[-1] == "Apply complete: no changes."


@pytest.mark.slow
def test_wheel_in_a_new_venv_runs_the_readme_example(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    # The wheel's dependencies come from the package index, as for any user.
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run([*pip, "--disable-pip-version-check", wheel], tmp_path)
    work = example_copy(tmp_path)
    where = run(
        [venv / "bin" / "python", "-c", "import reconciler; print(reconciler.__file__)"], work
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
    version = run([venv / "bin" / "reconcile", "--version"], work).stdout
    assert version == f"reconcile {wheel_version(wheel)}\n"
    run_readme_example(venv / "bin" / "reconcile", work)


@pytest.mark.slow
def test_uv_tool_install_from_the_wheel_offline(wheel: Path, tmp_path: Path) -> None:
    from uv import find_uv_bin

    # The dependencies' wheels, fetched beforehand: the install itself is offline.
    wheelhouse = tmp_path / "wheelhouse"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", wheelhouse, wheel], tmp_path)
    tools, bin_dir = tmp_path / "tools", tmp_path / "bin"
    env = clean_env(
        UV_TOOL_DIR=str(tools),
        UV_TOOL_BIN_DIR=str(bin_dir),
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_CONFIG="1",
    )
    uv = find_uv_bin()
    offline = ["--offline", "--no-index", "--find-links", wheelhouse]
    run([uv, "tool", "install", *offline, "--python", sys.executable, wheel], tmp_path, env)
    reconcile = bin_dir / "reconcile"
    assert reconcile.exists() and (tools / "conda-reconcile").is_dir()
    work = example_copy(tmp_path)
    assert run([reconcile, "--version"], work, env).stdout == f"reconcile {wheel_version(wheel)}\n"
    run_readme_example(reconcile, work)
    listed = run([uv, "tool", "list", "--offline"], tmp_path, env).stdout
    assert listed.startswith(f"conda-reconcile v{wheel_version(wheel)}\n- reconcile")
