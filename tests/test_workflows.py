"""The GitHub Actions workflows: valid, and the user-facing one does what the docs say."""

from __future__ import annotations

import json
import re
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


ACTIONLINT = REPO_ROOT / ".cache" / "actionlint" / "node_modules" / "@tktco" / "node-actionlint"


@pytest.mark.skipif(
    shutil.which("node") is None or not ACTIONLINT.is_dir(),
    reason="needs node and actionlint from npm (.ci/run installs it into .cache/actionlint)",
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
    reason="needs node and actionlint from npm (.ci/run installs it into .cache/actionlint)",
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


def load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((REPO_ROOT / ".github/workflows" / name).read_text())
    return data


def test_reconcile_workflow_triggers_and_concurrency() -> None:
    data = load("reconcile.yml")
    on = data[True]  # YAML reads the key `on` as true
    minutes = on["schedule"][0]["cron"].split()[0].split(",")
    assert len(minutes) == 4 and "0" not in minutes  # every 15 minutes, off the hour
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["run_now"]["type"] == "boolean" and inputs["mirror"]["type"] == "string"
    assert on["push"] == {"branches": ["main"], "paths": ["channels.yaml"]}
    assert "pull_request" in on
    assert data["concurrency"]["cancel-in-progress"] is False


ACTION_REF = "OWNER/conda-reconcile@v1"


def action_step(job: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if s.get("uses", "").startswith("OWNER/conda-reconcile@")]
    return step


def test_reconcile_workflow_runs_the_action() -> None:
    data = load("reconcile.yml")
    jobs = data["jobs"]
    action: dict[str, Any] = yaml.safe_load((REPO_ROOT / "action.yml").read_text())
    # pull requests: plan (the action writes it to the job summary), then a comment
    assert jobs["plan"]["if"] == "github.event_name == 'pull_request'"
    plan = action_step(jobs["plan"])
    assert plan["uses"] == ACTION_REF and plan["with"]["command"] == "plan"
    # everything else: apply with a report, run_now and mirror passed through (on disk
    # unless the channels are in a bucket)
    assert jobs["apply"]["if"] == (
        "github.event_name != 'pull_request' && vars.CHANNELS_IN_BUCKET != 'true'"
    )
    apply = action_step(jobs["apply"])
    assert apply["uses"] == ACTION_REF and apply["with"]["command"] == "apply"
    assert apply["with"]["run-now"] == "${{ inputs.run_now || false }}"
    assert apply["with"]["mirror"] == "${{ inputs.mirror }}"
    assert plan["with"]["config"] == apply["with"]["config"] == "${{ env.CONFIG }}"
    assert data["env"]["CONFIG"] == "channels.yaml"
    for step in (plan, apply):
        assert set(step["with"]) <= set(action["inputs"])
    # what the other steps read from the action exists
    text = (REPO_ROOT / ".github/workflows/reconcile.yml").read_text()
    for output in re.findall(r"steps\.reconcile\.outputs\.([\w-]+)", text):
        assert output in action["outputs"], output
    upload = next(s for s in jobs["apply"]["steps"] if "upload-artifact" in s.get("uses", ""))
    assert "report-dir" in upload["if"] and "report.json" in upload["with"]["path"]
    comment = next(s for s in jobs["plan"]["steps"] if "github-script" in s.get("uses", ""))
    assert "${{" not in comment["with"]["script"]  # the summary comes in through env
    assert comment["env"]["SUMMARY"] == "${{ steps.reconcile.outputs.summary }}"
    # whoever copies it is told to replace OWNER and to pin
    for line in text.splitlines():
        if ACTION_REF in line:
            assert "replace OWNER" in line and "pin" in line


def test_reconcile_workflow_runs_bucket_channels_on_hosted_runners(tmp_path: Path) -> None:
    data = load("reconcile.yml")
    jobs = data["jobs"]
    action: dict[str, Any] = yaml.safe_load((REPO_ROOT / "action.yml").read_text())
    # Either the disk job or the bucket jobs run, never both.
    assert jobs["channels"]["if"] == (
        "github.event_name != 'pull_request' && vars.CHANNELS_IN_BUCKET == 'true'"
    )
    bucket = jobs["apply-bucket"]
    assert bucket["needs"] == "channels" and bucket["runs-on"] == "ubuntu-latest"
    # One job per channel, each on its own: a failing channel does not stop the others.
    assert bucket["strategy"]["matrix"]["channel"] == (
        "${{ fromJSON(needs.channels.outputs.names) }}"
    )
    assert bucket["strategy"]["fail-fast"] is False
    # OIDC needs id-token: write, on this job only; the workflow stays contents: read.
    assert bucket["permissions"] == {"contents": "read", "id-token": "write"}
    assert "id-token" not in data["permissions"]
    for name, job in jobs.items():
        if name != "apply-bucket":
            assert "id-token" not in job.get("permissions", {})
    steps = bucket["steps"]
    credentials = next(s for s in steps if "configure-aws-credentials" in s.get("uses", ""))
    assert PINNED.fullmatch(credentials["uses"])
    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    assert credentials["with"]["aws-access-key-id"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
    assert credentials["with"]["aws-region"] == "${{ vars.AWS_REGION }}"
    apply = action_step(bucket)
    assert steps.index(credentials) < steps.index(apply)
    assert apply["with"]["command"] == "apply" and apply["with"]["channel"] == (
        "${{ matrix.channel }}"
    )
    assert set(apply["with"]) <= set(action["inputs"])
    assert apply["env"]["AWS_ENDPOINT_URL_S3"] == "${{ vars.AWS_ENDPOINT_URL_S3 }}"
    upload = next(s for s in steps if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["name"] == "reconcile-report-${{ matrix.channel }}"
    # The channel list comes from channels.yaml: run the step's script on one.
    (step,) = [s for s in jobs["channels"]["steps"] if s.get("id") == "list"]
    script = "\n".join(line for line in step["run"].splitlines() if "pip install" not in line)
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - {name: team, path: 's3://chan/team'}\n"
        "  - {name: wheels, kind: pypi, path: 's3://chan/wheels'}\n"
    )
    output = tmp_path / "output"
    output.write_text("")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GITHUB_OUTPUT": str(output)}
    run = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script.replace("python3", sys.executable)],
        env={**env, "CONFIG": str(config)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert output.read_text() == 'names=["team", "wheels"]\n'
    assert jobs["channels"]["outputs"]["names"] == "${{ steps.list.outputs.names }}"


def _steps(data: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in data["jobs"].values() for step in job.get("steps", [])]


def test_nothing_installs_conda_reconcile_unpinned() -> None:
    # `pip install conda-reconcile` takes whatever holds the name on the index that day.
    for workflow in WORKFLOWS:
        for step in _steps(yaml.safe_load(workflow.read_text())):
            for match in re.finditer(r"install\b[^\n]*?\bconda-reconcile\S*", step.get("run", "")):
                assert "==" in match.group(0), f"{workflow.name}: {match.group(0)}"


PINNED = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_third_party_actions_are_pinned_to_a_commit(workflow: Path) -> None:
    for step in _steps(yaml.safe_load(workflow.read_text())):
        uses = step.get("uses")
        if uses is None or uses.startswith("./") or uses == ACTION_REF:
            continue  # this repository's own action
        assert PINNED.fullmatch(uses), f"{workflow.name}: {uses} is not pinned to a commit"
    for line in workflow.read_text().splitlines():
        if re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40}", line):
            assert re.search(r"@[0-9a-f]{40} # v\d", line), f"no version comment: {line}"


SHELLCHECK = shutil.which("shellcheck")


@pytest.mark.skipif(SHELLCHECK is None, reason="needs shellcheck (.ci/run installs Debian's)")
def test_shell_scripts_pass_shellcheck() -> None:
    documents = {w.name: yaml.safe_load(w.read_text()) for w in WORKFLOWS}
    documents["action.yml"] = yaml.safe_load((REPO_ROOT / "action.yml").read_text())
    checked = 0
    for name, data in documents.items():
        steps = data["runs"]["steps"] if "runs" in data else _steps(data)
        for step in steps:
            if "run" not in step:
                continue
            assert step.get("shell", "bash") == "bash"
            # As actionlint does: an expression stands for a word.
            script = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
            check = subprocess.run(
                [str(SHELLCHECK), "--shell=bash", "-"], input=script, capture_output=True, text=True
            )
            assert check.returncode == 0, f"{name}: {step.get('name')}\n{check.stdout}"
            checked += 1
    assert checked >= 10


def test_shellcheck_is_not_blind(tmp_path: Path) -> None:
    if SHELLCHECK is None:
        pytest.skip("needs shellcheck (.ci/run installs Debian's)")
    check = subprocess.run(
        [SHELLCHECK, "--shell=bash", "-"], input="rm -rf $DIR/*\n", capture_output=True, text=True
    )
    assert check.returncode != 0 and "SC2086" in check.stdout


def github_filter(pattern: str) -> re.Pattern[str]:
    """A GitHub Actions branch/tag filter pattern as a regex: `*` any characters but `/`,
    `+` one or more of the character or class before it, `[...]` a class."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i : i + 2] == "**":
                out += ".*"
                i += 2
                continue
            out += "[^/]*"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        elif c in "+?":
            out += c
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def test_release_runs_on_version_tags_only() -> None:
    data = load("release.yml")
    (pattern,) = data[True]["push"]["tags"]
    assert set(data[True]) == {"push"} and set(data[True]["push"]) == {"tags"}
    matches = github_filter(pattern).fullmatch
    for tag in ("v0.1.0", "v1.2.3", "v10.20.30", "v1.3.0rc1", "v2.0.0.post1"):
        assert matches(tag), tag
    for tag in ("v1", "v1.2", "latest", "1.2.3", "v1.2.x", "release/v1.2.3"):
        assert not matches(tag), tag


def test_release_builds_once_tests_the_wheel_then_publishes_with_oidc() -> None:
    data = load("release.yml")
    jobs = data["jobs"]
    assert data["permissions"] == {"contents": "read"}
    assert set(jobs) == {"build", "test", "publish"}
    # build: one job, the tags fetched for hatch-vcs, dist/ uploaded once
    build = jobs["build"]
    checkout = next(s for s in build["steps"] if "actions/checkout@" in s.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0
    runs = "\n".join(s.get("run", "") for s in build["steps"])
    assert "python -m build" in runs
    assert "CHANGELOG.md" in runs and 'os.environ["TAG"]' in runs
    uploads = [s for s in build["steps"] if "upload-artifact" in s.get("uses", "")]
    assert len(uploads) == 1 and uploads[0]["with"]["name"] == "dist"
    for name, job in jobs.items():
        if name != "build":
            assert not any("python -m build" in s.get("run", "") for s in job["steps"])
    # test: the downloaded wheel in a new venv, the README's example outside the checkout
    test = jobs["test"]
    assert test["needs"] == "build"
    test_checkout = next(s for s in test["steps"] if "actions/checkout@" in s.get("uses", ""))
    assert test_checkout["with"]["sparse-checkout"] == "examples"
    script = "\n".join(s.get("run", "") for s in test["steps"])
    assert 'python -m venv "$RUNNER_TEMP/venv"' in script
    assert "pip install --disable-pip-version-check dist/*.whl" in script
    assert 'cp -r examples "$RUNNER_TEMP/work/examples"' in script
    assert 'cd "$RUNNER_TEMP/work"' in script
    assert script.count('"$reconcile" apply -c examples/channels.yaml') == 2
    assert 'grep -qx "Apply complete: no changes."' in script
    # publish: after both, trusted publishing, attestations, no token anywhere
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"build", "test"}
    assert publish["environment"]["name"] == "pypi"
    assert publish["permissions"] == {
        "contents": "read",
        "id-token": "write",
        "attestations": "write",
    }
    uses = [s.get("uses", "").split("@")[0] for s in publish["steps"]]
    assert uses == [
        "actions/download-artifact",
        "actions/attest-build-provenance",
        "pypa/gh-action-pypi-publish",
    ]
    attest = publish["steps"][1]
    assert attest["with"]["subject-path"] == "dist/*"
    assert "with" not in publish["steps"][2]  # no password: OIDC
    text = (REPO_ROOT / ".github/workflows/release.yml").read_text()
    assert "secrets." not in text and "password" not in text
    for name, job in jobs.items():
        if name != "publish":
            assert "permissions" not in job  # contents: read, from the top


def test_dependabot_keeps_the_pins_current() -> None:
    path = REPO_ROOT / ".github" / "dependabot.yml"
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.dependabot", path],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    updates = yaml.safe_load(path.read_text())["updates"]
    assert {"package-ecosystem": "github-actions", "directory": "/"}.items() <= updates[0].items()


def release_check(tmp_path: Path, tag: str, built: str, changelog: str) -> tuple[int, str]:
    """Run the release workflow's version and changelog check on made-up files."""
    step = next(
        s for s in load("release.yml")["jobs"]["build"]["steps"] if s.get("id") == "version"
    )
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / f"conda_reconcile-{built}-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "dist" / f"conda_reconcile-{built}.tar.gz").write_bytes(b"sdist")
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    output = tmp_path / "output"
    output.write_text("")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GITHUB_OUTPUT": str(output)}
    process = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp_path,
        env={**env, "TAG": tag},
        capture_output=True,
        text=True,
    )
    return process.returncode, process.stderr + output.read_text()


@pytest.mark.parametrize(
    ("tag", "built", "changelog", "expected"),
    [
        ("v0.1.0", "0.1.0", None, "version=0.1.0\n"),
        ("v1.3.0-rc1", "1.3.0rc1", "## [1.3.0rc1] - 2030-01-01\n", "version=1.3.0rc1\n"),
        ("v0.1.0", "0.1.1.dev1+g0123abcd", None, "the wheel is version 0.1.1.dev1+g0123abcd"),
        ("v9.9.9", "9.9.9", None, "CHANGELOG.md has no '## [9.9.9]' section"),
    ],
)
def test_release_checks_the_version_and_the_changelog(
    tmp_path: Path, tag: str, built: str, changelog: str | None, expected: str
) -> None:
    text = changelog or (REPO_ROOT / "CHANGELOG.md").read_text()
    code, output = release_check(tmp_path, tag, built, text)
    assert expected in output
    assert (code == 0) is expected.startswith("version=")


def test_changelog_keeps_a_changelog() -> None:
    text = (REPO_ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.*)$", text, re.MULTILINE)
    assert text.startswith("# Changelog\n") and headings[0] == "[Unreleased]"
    releases = [
        re.fullmatch(r"\[(\d+\.\d+\.\d+\S*)\] - (\d{4}-\d{2}-\d{2})", h) for h in headings[1:]
    ]
    assert releases and all(releases), headings
    for name in ["Unreleased"] + [m.group(1) for m in releases if m]:
        assert re.search(rf"^\[{re.escape(name)}\]: https://\S+$", text, re.MULTILINE), name
    for section in re.findall(r"^### (.*)$", text, re.MULTILINE):
        assert section in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
