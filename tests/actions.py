"""Run the repository's composite action (action.yml) the way the Actions runner does.

Only what action.yml uses is supported, and anything else raises, so that a change to the
action that this runner cannot follow fails the tests instead of being skipped silently:
`${{ inputs.NAME }}` and `${{ steps.ID.outputs.NAME }}` in `env:` and `outputs:`, `if:
inputs.NAME != ''`, `shell: bash` run steps (started as the runner starts them, with
`bash --noprofile --norc -eo pipefail`), and `GITHUB_OUTPUT`, `GITHUB_STEP_SUMMARY`,
`RUNNER_TEMP` and `GITHUB_ACTION_PATH`. Steps that `uses:` another action are not run:
the caller gives their outputs.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

ACTION = REPO_ROOT / "action.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
INPUT = re.compile(r"inputs\.([A-Za-z0-9_-]+)")
STEP_OUTPUT = re.compile(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)")
IF_INPUT_SET = re.compile(r"inputs\.([A-Za-z0-9_-]+)\s*(!=|==)\s*''")


def load_action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    return data


@dataclass
class StepResult:
    id: str | None
    name: str
    returncode: int
    output: str
    outputs: dict[str, str]


@dataclass
class ActionResult:
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""

    @property
    def returncode(self) -> int:
        return next((s.returncode for s in self.steps if s.returncode != 0), 0)

    @property
    def log(self) -> str:
        return "".join(s.output for s in self.steps)


def parse_output_file(text: str) -> dict[str, str]:
    """`name=value` lines and `name<<DELIMITER` blocks, as the runner reads them."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block: list[str] = []
            while lines[i] != delimiter:
                block.append(lines[i])
                i += 1
            i += 1
            outputs[name] = "\n".join(block)
        else:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


def evaluate(text: str, inputs: Mapping[str, str], steps: Mapping[str, Mapping[str, str]]) -> str:
    def one(match: re.Match[str]) -> str:
        expression = match.group(1)
        if m := INPUT.fullmatch(expression):
            return inputs[m.group(1)]
        if m := STEP_OUTPUT.fullmatch(expression):
            return steps.get(m.group(1), {}).get(m.group(2), "")
        raise NotImplementedError(f"expression not supported by tests/actions.py: {expression}")

    return EXPRESSION.sub(one, text)


def condition_holds(condition: str, inputs: Mapping[str, str]) -> bool:
    m = IF_INPUT_SET.fullmatch(condition.strip())
    if m is None:
        raise NotImplementedError(f"condition not supported by tests/actions.py: {condition}")
    is_set = inputs[m.group(1)] != ""
    return is_set if m.group(2) == "!=" else not is_set


def run_action(
    inputs: Mapping[str, str],
    *,
    workdir: Path,
    runner_temp: Path,
    given: Mapping[str, Mapping[str, str]],
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> ActionResult:
    """Run action.yml's steps in order, stopping at the first that fails.

    ``given`` maps the id of each step not to run (every `uses:` step, and any run step the
    test stands in for) to the outputs it would have set.
    """
    action = load_action()
    declared = action["inputs"]
    unknown = set(inputs) - set(declared)
    assert not unknown, f"not inputs of the action: {unknown}"
    values = {name: str(spec.get("default", "")) for name, spec in declared.items()}
    values.update(inputs)
    runner_temp.mkdir(parents=True, exist_ok=True)
    summary_file = runner_temp / "step_summary.md"
    summary_file.write_text("")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_"))}
    base_env.pop("PYTHONPATH", None)
    base_env.update(env or {})
    base_env.update(
        GITHUB_ACTIONS="true",
        GITHUB_ACTION_PATH=str(REPO_ROOT),
        GITHUB_STEP_SUMMARY=str(summary_file),
        RUNNER_TEMP=str(runner_temp),
    )
    result = ActionResult()
    step_outputs: dict[str, dict[str, str]] = {}
    for index, step in enumerate(action["runs"]["steps"]):
        step_id = step.get("id")
        name = step.get("name", f"step {index}")
        if "if" in step and not condition_holds(step["if"], values):
            continue
        if step_id in given or "uses" in step:
            assert step_id in given, f"step {name!r} uses an action: give its outputs"
            step_outputs[step_id] = dict(given[step_id])
            continue
        assert step.get("shell") == "bash", f"step {name!r}: only bash steps are supported"
        output_file = runner_temp / f"output_{index}"
        output_file.write_text("")
        step_env = dict(base_env)
        for key, value in (step.get("env") or {}).items():
            step_env[key] = evaluate(str(value), values, step_outputs)
        step_env["GITHUB_OUTPUT"] = str(output_file)
        script = runner_temp / f"step_{index}.sh"
        script.write_text(step["run"])
        process = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workdir,
            env=step_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        outputs = parse_output_file(output_file.read_text())
        if step_id:
            step_outputs[step_id] = outputs
        result.steps.append(StepResult(step_id, name, process.returncode, process.stdout, outputs))
        if process.returncode != 0:
            break
    result.summary = summary_file.read_text()
    for name, spec in action.get("outputs", {}).items():
        result.outputs[name] = evaluate(spec["value"], values, step_outputs)
    return result
