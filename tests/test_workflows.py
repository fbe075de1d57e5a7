"""The GitHub Actions workflows: valid, and the user-facing one does what the docs say."""

from __future__ import annotations

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
    if shutil.which("actionlint"):  # used too where it is installed
        lint = subprocess.run(["actionlint", str(workflow)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


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
