"""The version: made by hatch-vcs from the release tag at build time, read back from the
installed metadata at run time, and shown by `reconcile --version`."""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import reconciler
from reconciler import cli
from tests.conftest import REPO_ROOT

FALLBACK = re.search(
    r'^fallback-version = "([^"]+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE
)


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert reconciler.__version__ == importlib.metadata.version("conda-reconcile")
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"reconcile {reconciler.__version__}\n"


def test_a_source_tree_that_was_never_installed_says_the_fallback() -> None:
    assert FALLBACK is not None
    code = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import reconciler; print(reconciler.__version__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert run.stdout.strip() == FALLBACK.group(1)


def wheel_version(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    match = re.search(r"^Version: (\S+)$", text, re.MULTILINE)
    assert match is not None
    return match.group(1)


def build_wheel(source: Path, out: Path) -> str:
    """Build a wheel the way pip does for `pip install DIR` (isolated, with the build
    requirements of pyproject.toml) and return its version."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM")}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        env=env,
        timeout=300,
    )
    (wheel,) = out.glob("conda_reconcile-*.whl")
    version = wheel_version(wheel)
    assert wheel.name.startswith(f"conda_reconcile-{version}-")
    shutil.rmtree(out)
    return version


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Release", "-c", "user.email=release@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def copy_project(target: Path) -> Path:
    """What a build reads: the metadata, the package, and the git archive file."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md", ".gitattributes", ".git_archival.txt"):
        shutil.copy2(REPO_ROOT / name, target / name)
    shutil.copytree(
        REPO_ROOT / "reconciler",
        target / "reconciler",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


def extract_archive(repo: Path, ref: str, target: Path) -> Path:
    """`git archive`, as GitHub serves a ref's tarball (and the runner fetches an action)."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=repo, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        if hasattr(tarfile, "data_filter"):  # 3.12, and security releases of 3.10 and 3.11
            archive.extractall(target, filter="data")
        else:
            archive.extractall(target)
    return target


@pytest.mark.slow
def test_version_comes_from_the_release_tag(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "tag", "-a", "v9.8.7", "-m", "conda-reconcile 9.8.7")
    out = tmp_path / "out"

    assert build_wheel(repo, out) == "9.8.7"

    # One commit later, with the action's major tag moved onto it: still a 9.8.7 successor,
    # never version "9".
    git(repo, "commit", "-q", "--allow-empty", "-m", "next")
    git(repo, "tag", "v9")
    after = build_wheel(repo, out)
    assert after.startswith("9.8.8.dev1+g"), after

    # A ref's archive (what the runner downloads for `uses: OWNER/conda-reconcile@v9`)
    # has no .git: .git_archival.txt carries the version.
    assert build_wheel(extract_archive(repo, "v9.8.7", tmp_path / "at-tag"), out) == "9.8.7"
    from_archive = build_wheel(extract_archive(repo, "v9", tmp_path / "at-v9"), out)
    assert from_archive.startswith("9.8.8.dev1+g"), from_archive

    # A plain copy with neither git nor a filled-in archive file still builds.
    assert FALLBACK is not None
    assert build_wheel(copy_project(tmp_path / "plain"), out) == FALLBACK.group(1)
