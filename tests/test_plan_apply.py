"""plan / apply end to end through the command line, on a temporary config and channel."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler import cli
from reconciler.errors import ExitCode
from tests.conftest import REPO_ROOT
from tests.packages import PackageSpec, build_package

CONFIG = """\
version: 1
channels:
  - name: internal
    path: ./chan
    subdirs: [linux-64, noarch]
    patches: [fix.json]
    filters:
      exclude:
        - license: GPL
          except: [{name: "libgcc*"}]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "channels.yaml").write_text(CONFIG)
    (tmp_path / "fix.json").write_text("{}")
    chan = tmp_path / "chan"
    build_package(chan, PackageSpec("foo", "1.0", subdir="linux-64", depends=["bar"]))
    build_package(chan, PackageSpec("bar", "2.0", noarch="generic"), ".tar.bz2")
    build_package(chan, PackageSpec("gplthing", "1.0", subdir="linux-64", license="GPL-3.0-only"))
    return tmp_path


def run(project: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([*args, "-c", str(project / "channels.yaml")])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(project: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = run(project, "plan", "--json", capsys=capsys)
    assert code == ExitCode.OK
    data: dict[str, Any] = json.loads(out)
    return data


def actions(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    return [
        (a["kind"], a["location"], a["name"])
        for c in plan["channels"]
        for a in c["actions"]
        if a["kind"] != "reindex"
    ]


def test_first_plan_apply_then_no_changes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(project, "plan", "--detailed-exitcode", capsys=capsys)
    assert code == ExitCode.CHANGES
    assert "+ foo-1.0-0.conda  (local-added)" in out
    assert "+ bar-2.0-0.tar.bz2  (local-added)" in out
    assert "gplthing" not in out  # excluded by the channel filter, never published
    # The index files written along with new packages are not counted as changes of their own.
    assert out.rstrip().endswith("Plan: 2 to add, 0 to change, 0 to remove.")

    code, out, _ = run(project, "apply", capsys=capsys)
    assert code == ExitCode.OK
    assert "Apply complete: 2 added, 0 changed, 0 removed." in out
    repodata = json.loads((project / "chan" / "linux-64" / "repodata.json").read_text())
    assert sorted(repodata["packages.conda"]) == ["foo-1.0-0.conda"]

    code, out, _ = run(project, "plan", "--detailed-exitcode", capsys=capsys)
    assert (code, out) == (ExitCode.OK, "No changes. Channels match the configuration.\n")

    # Apply again: nothing rewritten, nothing recorded.
    before = {p: p.stat().st_mtime_ns for p in (project / "chan").rglob("*") if p.is_file()}
    code, out, _ = run(project, "apply", capsys=capsys)
    assert (code, out) == (ExitCode.OK, "Apply complete: no changes.\n")
    after = {p: p.stat().st_mtime_ns for p in (project / "chan").rglob("*") if p.is_file()}
    assert after == before


def test_drop_change_patch_delete(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(project, "apply", capsys=capsys)
    chan = project / "chan"

    build_package(chan, PackageSpec("new", "0.1", subdir="linux-64"))
    code, out, _ = run(project, "plan", "--detailed-exitcode", capsys=capsys)
    assert code == ExitCode.CHANGES
    assert "+ new-0.1-0.conda  (local-added)" in out
    assert "~ reindex" not in out  # implied by the addition
    run(project, "apply", capsys=capsys)

    (project / "fix.json").write_text(
        json.dumps({"packages.conda": {"foo-1.0-0.conda": {"depends": ["bar", "libzlib >=1.3"]}}})
    )
    code, out, _ = run(project, "plan", capsys=capsys)
    assert "~ foo-1.0-0.conda  (patched: record changed by a patch)" in out
    assert 'depends: + "libzlib >=1.3"' in out
    plan = plan_json(project, capsys)
    update = next(a for c in plan["channels"] for a in c["actions"] if a["kind"] == "update")
    assert update["diff"] == ['depends: + "libzlib >=1.3"']
    run(project, "apply", capsys=capsys)

    (chan / "noarch" / "bar-2.0-0.tar.bz2").unlink()
    assert actions(plan_json(project, capsys)) == [("remove", "noarch", "bar-2.0-0.tar.bz2")]
    code, out, _ = run(project, "plan", capsys=capsys)
    assert "- bar-2.0-0.tar.bz2  (local-removed: the package file was deleted)" in out


def test_filter_change_removes_with_reason(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project, "apply", capsys=capsys)
    text = CONFIG + "        - {name: bar}\n"
    (project / "channels.yaml").write_text(text)
    code, out, _ = run(project, "plan", capsys=capsys)
    assert code == ExitCode.OK
    assert (
        "- bar-2.0-0.tar.bz2  (filtered: excluded by channels[0].filters.exclude[1] (name: bar))"
    ) in out
    run(project, "apply", capsys=capsys)
    # The local file is kept: filtering unpublishes, it never deletes a user's package.
    assert (project / "chan" / "noarch" / "bar-2.0-0.tar.bz2").exists()


def test_saved_plan_applies_or_is_refused_when_stale(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = project / "plan.json"
    code, out, _ = run(project, "plan", "--out", str(saved), capsys=capsys)
    assert saved.is_file()
    code, out, _ = run(project, "apply", str(saved), capsys=capsys)
    assert code == ExitCode.OK and "2 added" in out

    run(project, "plan", "--out", str(saved), capsys=capsys)
    build_package(project / "chan", PackageSpec("late", "1.0", subdir="linux-64"))
    code, _, err = run(project, "apply", str(saved), capsys=capsys)
    assert code == ExitCode.ERROR
    assert "the saved plan is stale: channel internal changed since the plan (linux-64/)" in err

    run(project, "plan", "--out", str(saved), capsys=capsys)
    (project / "channels.yaml").write_text(CONFIG.replace("GPL", "AGPL"))
    code, _, err = run(project, "apply", str(saved), capsys=capsys)
    assert code == ExitCode.ERROR
    assert "changed" in err and "channels.yaml" in err


def test_plan_and_report_validate_against_their_schemas(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_schema = json.loads((REPO_ROOT / "schemas" / "plan.schema.json").read_text())
    report_schema = json.loads((REPO_ROOT / "schemas" / "report.schema.json").read_text())
    jsonschema.validate(plan_json(project, capsys), plan_schema)
    report = project / "report.json"
    code, _, _ = run(project, "apply", "--report", str(report), capsys=capsys)
    assert code == ExitCode.OK
    data = json.loads(report.read_text())
    jsonschema.validate(data, report_schema)
    assert data["result"] == "completed"
    assert sorted(data["channels"][0]["added"]) == [
        "linux-64/foo-1.0-0.conda",
        "noarch/bar-2.0-0.tar.bz2",
    ]
    assert "| internal | completed | 2 | 0 | 0 | 0 |" in report.with_suffix(".md").read_text()


def test_committed_schemas_match_the_models() -> None:
    from reconciler.engine.plan import schema_text as plan_schema
    from reconciler.engine.report import schema_text as report_schema
    from reconciler.engine.status import schema_text as status_schema

    assert (REPO_ROOT / "schemas" / "plan.schema.json").read_text() == plan_schema()
    assert (REPO_ROOT / "schemas" / "report.schema.json").read_text() == report_schema()
    assert (REPO_ROOT / "schemas" / "status.schema.json").read_text() == status_schema()


def test_step_summary_is_appended(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = project / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run(project, "apply", capsys=capsys)
    assert "## conda-reconcile apply: completed" in summary.read_text()


def test_failed_run_is_recorded_and_shown(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "chan" / "linux-64" / "broken-1.0-0.conda").write_bytes(b"junk")
    code, out, err = run(project, "apply", capsys=capsys)
    assert code == ExitCode.ERROR
    assert "broken-1.0-0.conda: not a valid .conda" in err
    # What worked is published.
    assert (project / "chan" / "linux-64" / "repodata.json").exists()
    code, out, _ = run(project, "history", capsys=capsys)
    assert "internal" in out and "failed" in out and "broken-1.0-0.conda" in out
    code, out, _ = run(project, "status", capsys=capsys)
    assert "last run   failed" in out
    assert "linux-64: 1" in out
    code, out, _ = run(project, "history", "--json", capsys=capsys)
    runs = json.loads(out)
    assert runs[0]["state"] == "failed" and runs[0]["added"] == 2


def test_unknown_channel_and_mirror_selection(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(project, "plan", "--channel", "nope", capsys=capsys)
    assert code == ExitCode.ERROR and "no channel named nope" in err
    code, _, err = run(project, "plan", "--mirror", "m", capsys=capsys)
    assert code == ExitCode.ERROR and "no mirror named m" in err


APPLY_SCRIPT = textwrap.dedent(
    """
    import sys
    from reconciler import cli
    sys.exit(cli.main(["apply", "-c", sys.argv[1], *sys.argv[2:]]))
    """
)


def run_apply(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", APPLY_SCRIPT, str(config), *args], capture_output=True, text=True
    )


@pytest.mark.slow
def test_two_applies_at_once(project: Path) -> None:
    from reconciler.engine.history import History
    from reconciler.store.local import LocalStore
    from tests.store.test_local import hold_in_child

    config = project / "channels.yaml"
    # Held until the test ends it: a slow machine must not let it go early.
    holder = hold_in_child(project / "chan", 600)
    try:
        # A run that finds the channel locked is skipped, not failed, and says by whom.
        skipped = run_apply(config)
        assert skipped.returncode == ExitCode.OK, skipped.stderr
        assert "skipped channel internal: locked by another run" in skipped.stderr
        runs = History(LocalStore(project / "chan")).runs()
        assert runs[-1].state == "skipped" and f"pid {holder.pid}" in (runs[-1].error or "")
        # --wait gives up after --lock-timeout, naming the holder...
        refused = run_apply(config, "--wait", "--lock-timeout", "0.2")
        assert refused.returncode == ExitCode.ERROR
        assert f"is locked by pid {holder.pid}" in refused.stderr
        # ...or gets the lock when the holder finishes.
        waiter = subprocess.Popen(
            [sys.executable, "-c", APPLY_SCRIPT, str(config), "--wait", "--lock-timeout", "60"],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        assert waiter.poll() is None, waiter.communicate()  # still waiting for the lock
        holder.kill()  # the kernel releases a dead holder's lock at once
        _, err = waiter.communicate(timeout=120)
        assert waiter.returncode == ExitCode.OK, err
    finally:
        holder.kill()
        holder.wait()
    assert run_apply(config).stdout == "Apply complete: no changes.\n"
