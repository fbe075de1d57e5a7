"""Planner helpers: field diffs, git revision, published digests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.config.models import Channel
from reconciler.engine.diff import field_diff
from reconciler.engine.plan import PlanWarning
from reconciler.engine.planner import flag_new, git_revision
from reconciler.kinds.conda.kind import CondaKind
from reconciler.store.local import LocalStore


def test_field_diff_lists_each_change() -> None:
    old = {"depends": ["a", "b"], "license": "MIT", "gone": 1, "build_number": 0}
    new = {"depends": ["a", "c"], "license": "BSD", "added": True, "build_number": 1}
    assert field_diff(old, new) == [
        "added: + true",
        "build_number: 0 → 1",
        'depends: + "c"',
        'depends: - "b"',
        "gone: - 1",
        'license: "MIT" → "BSD"',
    ]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary to make a repo")
def test_git_revision_reads_head(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    assert git_revision(tmp_path) is None
    git("init", "-q")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
    )
    (tmp_path / "sub").mkdir()
    assert git_revision(tmp_path / "sub") == git("rev-parse", "HEAD")
    git("pack-refs", "--all")
    assert git_revision(tmp_path) == git("rev-parse", "HEAD")


def test_published_digests_follow_files_not_state(tmp_path: Path) -> None:
    (tmp_path / "noarch").mkdir()
    (tmp_path / "noarch" / "a-1-0.conda").write_bytes(b"x")
    channel = Channel(name="c", path=tmp_path, subdirs=["noarch", "linux-64"])
    store = LocalStore(tmp_path)

    def digests() -> dict[str, str]:
        return CondaKind().published(channel, store)

    first = digests()
    assert first["linux-64"] == "absent"
    (tmp_path / ".reconciler").mkdir()
    (tmp_path / ".reconciler" / "history.jsonl").write_text("{}")
    (tmp_path / "noarch" / ".reconcile-tmp-x").write_text("partial")
    assert digests() == first
    (tmp_path / "noarch" / "b-1-0.conda").write_bytes(b"y")
    assert digests()["noarch"] != first["noarch"]


def test_warnings_are_flagged_new_unless_an_earlier_apply_saw_them() -> None:
    given = [
        PlanWarning(key="a", message="first a"),
        PlanWarning(key="b", message="b"),
        PlanWarning(key="a", message="second a"),
        PlanWarning(key="c", message="c", new=False),
    ]
    flagged = flag_new(given, {"b": "b", "c": "c"})
    assert [(w.key, w.message, w.new) for w in flagged] == [
        ("a", "first a", True),
        ("b", "b", False),
        ("c", "c", False),
    ]
    assert [w.new for w in given] == [True, True, True, False]  # left as they were
    assert flagged[0] is given[0] and flagged[2] is given[3]  # copied only to change
    assert flag_new(given, {})[2].new is True
