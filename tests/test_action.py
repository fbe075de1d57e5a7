"""The composite GitHub Action (action.yml): valid, safe with its inputs, and doing what its
outputs say, run step by step as the Actions runner runs it (tests/actions.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.actions import (
    ACTION,
    EXPRESSION,
    INPUT,
    STEP_OUTPUT,
    ActionResult,
    load_action,
    run_action,
)
from tests.conftest import REPO_ROOT

PINNED = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")
# Outputs of the actions that action.yml uses (from their own action.yml).
USES_OUTPUTS = {"actions/setup-python": {"python-version", "cache-hit", "python-path"}}
BIN = str(Path(sys.executable).parent)  # this venv: `reconcile` and a python with reconciler


def test_action_is_valid_against_the_schema() -> None:
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-actions",
            str(ACTION),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [e for key, value in node.items() for e in _expressions(key) + _expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in _expressions(item)]
    if isinstance(node, str):
        return EXPRESSION.findall(node)
    return []


def test_scripts_take_every_value_through_env() -> None:
    # `${{ }}` inside a script is pasted into the shell text before bash reads it: an input
    # (or an output derived from one) holding `$(...)` or a quote would run as code.
    for step in load_action()["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], f"step {step.get('name')!r} interpolates into shell"
            assert step.get("shell") == "bash"


def test_every_input_and_step_output_referenced_exists() -> None:
    action = load_action()
    inputs = set(action["inputs"])
    steps = action["runs"]["steps"]
    seen: dict[str, set[str]] = {}  # step id -> outputs it can set
    for step in steps:
        for expression in _expressions({k: v for k, v in step.items() if k != "run"}):
            for name in INPUT.findall(expression):
                assert name in inputs, f"step {step.get('name')!r}: no input {name!r}"
            for step_id, output in STEP_OUTPUT.findall(expression):
                assert step_id in seen, f"{step.get('name')!r}: no earlier step {step_id!r}"
                assert output in seen[step_id], f"step {step_id!r} sets no output {output!r}"
        if "if" in step:
            for name in INPUT.findall(step["if"]):
                assert name in inputs
        if "id" in step:
            if "uses" in step:
                seen[step["id"]] = USES_OUTPUTS[step["uses"].split("@")[0]]
            else:
                # `echo "name=..." >> "$GITHUB_OUTPUT"`, or the python writing `name=...`
                seen[step["id"]] = set(re.findall(r"[\"']([a-z][a-z0-9-]*)=", step["run"]))
    for name, spec in action["outputs"].items():
        (step_id, output), *_ = STEP_OUTPUT.findall(spec["value"])
        assert output in seen[step_id], f"output {name!r}: step {step_id!r} sets no {output!r}"
        assert spec.get("description")
    for name, spec in action["inputs"].items():
        assert spec.get("description"), name
    # and every input is used somewhere
    used = {n for e in _expressions(action["runs"]) for n in INPUT.findall(e)}
    used |= {n for s in steps if "if" in s for n in INPUT.findall(s["if"])}
    assert used == inputs


def test_third_party_actions_are_pinned_to_a_commit() -> None:
    for step in load_action()["runs"]["steps"]:
        if "uses" in step:
            assert PINNED.fullmatch(step["uses"]), step["uses"]
    text = ACTION.read_text()
    for line in text.splitlines():
        if re.match(r"\s*uses: ", line):
            assert re.search(r"@[0-9a-f]{40} # v\d", line), f"no version comment: {line}"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of examples/ outside the source tree; the action runs in its parent."""
    work = tmp_path / "work"
    shutil.copytree(
        REPO_ROOT / "examples",
        work / "examples",
        ignore=shutil.ignore_patterns("channels", ".reconciler"),
    )
    return work


def run(
    inputs: dict[str, str], work: Path, tag: str, *, install: bool = False, **kwargs: Any
) -> ActionResult:
    """Run the action in ``work``; setup-python gives this interpreter, and the install step
    is stood in for by this venv (which has `reconcile`) unless ``install``."""
    given: dict[str, dict[str, str]] = {"python": {"python-path": sys.executable}}
    if not install:
        given["install"] = {"bin": BIN}
    return run_action(
        inputs, workdir=work, runner_temp=work.parent / f"temp-{tag}", given=given, **kwargs
    )


def test_plan_apply_and_no_changes(example: Path) -> None:
    config = {"config": "examples/channels.yaml"}
    secret = {"DEMO_TOKEN": "s3cr3t-t0ken-value"}  # what a caller passes with `env:`

    plan = run({"command": "plan", **config}, example, "plan", env=secret)
    assert plan.returncode == 0, plan.log
    assert plan.outputs["has-changes"] == "true"
    assert plan.outputs["result"] == "changes"
    # demo-lib 1.0 comes in as a candidate of demo-app 1.0's `demo-lib >=1.0`, though the
    # include rule asks for >=1.1 (include rules do not apply to dependencies).
    assert plan.outputs["summary"] == "Plan: 12 to add, 0 to change, 0 to remove, 2 to re-index."
    plan_text = (Path(plan.outputs["report-dir"]) / "plan.txt").read_text()
    assert plan_text.rstrip().endswith(plan.outputs["summary"])
    assert plan.summary.startswith("## conda-reconcile plan\n")
    assert f"```\n{plan_text.rstrip()}\n```" in plan.summary
    assert plan.outputs["summary"] in plan.log  # the plan is in the log as well
    published = example / "examples/channels/internal/linux-64/repodata.json"
    assert not published.exists()  # a plan publishes nothing

    apply = run({"command": "apply", **config}, example, "apply", env=secret)
    assert apply.returncode == 0, apply.log
    assert apply.outputs["has-changes"] == "true"
    assert apply.outputs["result"] == "completed"
    assert (
        apply.outputs["summary"] == "Apply complete: 12 added, 0 changed, 0 removed, 2 re-indexed."
    )
    report_dir = Path(apply.outputs["report-dir"])
    assert json.loads((report_dir / "report.json").read_text())["result"] == "completed"
    assert (report_dir / "report.md").read_text().startswith("## conda-reconcile apply: completed")
    assert apply.summary.startswith("## conda-reconcile apply: completed")  # by the CLI
    assert published.is_file()

    again = run({"command": "apply", **config}, example, "again")
    assert again.returncode == 0, again.log
    assert (again.outputs["has-changes"], again.outputs["result"]) == ("false", "no-changes")
    assert again.outputs["summary"] == "Apply complete: no changes."

    replan = run({"command": "plan", **config}, example, "replan")
    assert replan.returncode == 0, replan.log
    assert (replan.outputs["has-changes"], replan.outputs["result"]) == ("false", "no-changes")
    assert replan.outputs["summary"] == "No changes. Channels match the configuration."

    for result in (plan, apply, again, replan):
        everything = result.log + result.summary + json.dumps(result.outputs)
        assert secret["DEMO_TOKEN"] not in everything


def test_run_now_and_mirror_reach_the_command(example: Path) -> None:
    config = {"config": "examples/channels.yaml"}
    assert run({"command": "apply", **config}, example, "apply").returncode == 0
    plan = run(
        {"command": "plan", "run-now": "true", "mirror": "demo-core", **config}, example, "plan"
    )
    assert plan.returncode == 0, plan.log
    assert "mirror demo-core: refreshes (run now (--run-now)" in plan.log
    # Only the mirror asked for refreshes; the other stays as published.
    assert "demo-metadata: not refreshed (not named by --mirror" in plan.log
    plain = run({"command": "plan", "run-now": "false", **config}, example, "plain")
    assert "mirror demo-core: not refreshed (next run at" in plain.log
    assert "demo-metadata: not refreshed (next run at" in plain.log


def test_failures_fail_the_step_and_say_failed(example: Path) -> None:
    bad = example / "bad.yaml"
    bad.write_text("version: 1\nchannels:\n  - name: a\n    pth: x\n")
    plan = run({"command": "plan", "config": "bad.yaml"}, example, "plan")
    assert plan.returncode == 1
    assert (plan.outputs["result"], plan.outputs["has-changes"]) == ("failed", "false")
    assert plan.outputs["summary"] == "Plan failed (exit code 1): see the log."
    assert "unknown key 'pth'" in plan.log
    assert plan.summary == "## conda-reconcile plan: failed\n\n" + plan.outputs["summary"] + "\n"

    apply = run({"command": "apply", "config": "missing.yaml"}, example, "apply")
    assert apply.returncode == 1
    assert (apply.outputs["result"], apply.outputs["has-changes"]) == ("failed", "false")
    assert "configuration file not found" in apply.log
    assert "## conda-reconcile apply: failed" in apply.summary

    unknown = run(
        {"command": "apply", "config": "examples/channels.yaml", "mirror": "nope"},
        example,
        "unknown",
    )
    assert unknown.returncode == 1 and unknown.outputs["result"] == "failed"
    assert "no mirror named nope" in unknown.log


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"command": "destroy"}, "input 'command' must be 'plan' or 'apply'"),
        ({"command": "Apply"}, "input 'command' must be 'plan' or 'apply'"),
        ({"run-now": "yes"}, "input 'run-now' must be 'true' or 'false'"),
        ({"config": ""}, "input 'config' must name the configuration file"),
        ({"version": ">=1.0"}, "input 'version' must be an exact version"),
        ({"version": "latest"}, "input 'version' must be an exact version"),
        ({"version": "1.0 --index-url=http://evil"}, "input 'version' must be an exact version"),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_installed(
    example: Path, inputs: dict[str, str], message: str
) -> None:
    result = run(inputs, example, "bad")
    assert result.returncode == 1
    assert [s.name for s in result.steps] == ["Check the inputs"]  # nothing after it ran
    assert f"::error title=conda-reconcile::{message}" in result.log
    assert result.outputs["result"] == ""


def test_input_values_never_become_shell_code(example: Path) -> None:
    canary = example / "pwned"
    payloads = [f"$(touch {canary})", f"`touch {canary}`", f'"; touch {canary}; echo "']
    for i, payload in enumerate(payloads):
        for name in ("mirror", "config"):
            result = run(
                {"command": "plan", "config": "examples/channels.yaml", name: payload},
                example,
                f"{name}-{i}",
            )
            assert result.returncode == 1, result.log  # a mirror or file of that name: none
        result = run({"command": payload}, example, f"command-{i}")
        assert result.returncode == 1
    assert not canary.exists()
    # A value with a newline cannot start a workflow command of its own.
    result = run({"command": "plan\n::error::injected"}, example, "newline")
    assert result.returncode == 1
    assert not any(line.startswith("::error::injected") for line in result.log.splitlines())


@pytest.mark.slow
def test_install_step_installs_the_actions_own_copy(example: Path) -> None:
    # The default `version` installs the action's own folder (here: this checkout) into a
    # new virtual environment; dependencies come from the package index as on a runner.
    result = run(
        {"command": "apply", "config": "examples/channels.yaml"},
        example,
        "install",
        install=True,
        timeout=300,
    )
    assert result.returncode == 0, result.log
    install = next(s for s in result.steps if s.id == "install")
    venv_bin = Path(install.outputs["bin"])
    assert venv_bin.parent == example.parent / "temp-install" / "conda-reconcile" / "venv"
    assert re.search(r"^reconcile \S+$", install.output, re.MULTILINE), install.output
    location = subprocess.run(
        [venv_bin / "python", "-c", "import reconciler; print(reconciler.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=example,
    ).stdout.strip()
    assert Path(location).is_relative_to(venv_bin.parent)  # installed, not this checkout
    assert result.outputs["result"] == "completed"


def test_channel_reaches_the_command(example: Path) -> None:
    """`channel:` narrows the run to one channel (a workflow runs one job per channel)."""
    config = {"config": "examples/channels.yaml"}
    plan = run({"command": "plan", "channel": "internal", **config}, example, "one")
    assert plan.returncode == 0, plan.log
    assert "channel internal (" in plan.log
    assert "channel pypi (" not in plan.log
    everything = run({"command": "plan", **config}, example, "all")
    assert "channel pypi (" in everything.log
