from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.errors import ExitCode
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "channels.yaml"


def test_validate_example_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "-c", str(EXAMPLE)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "valid (3 channel(s), 3 mirror(s)" in out


def test_validate_reports_errors_and_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text("version: 1\nchannels:\n  - name: a\n    pth: x\n")
    assert cli.main(["validate", "-c", str(config)]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert f"{config}:4: channels[0].pth: unknown key 'pth' (did you mean 'path'?)" in err
    assert f"{config}:3: channels[0].path: missing required key 'path'" in err
    assert "hint:" in err


def test_config_defaults_to_channels_yaml_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate"]) == ExitCode.ERROR
    assert "channels.yaml: configuration file not found" in capsys.readouterr().err
    (tmp_path / "channels.yaml").write_text("version: 1\nchannels: [{name: a, path: a}]\n")
    assert cli.main(["validate"]) == ExitCode.OK


def test_schema_matches_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == ExitCode.OK
    committed = (REPO_ROOT / "schemas" / "channels.schema.json").read_text(encoding="utf-8")
    assert capsys.readouterr().out == committed, (
        "schemas/channels.schema.json is stale: "
        "run `reconcile schema > schemas/channels.schema.json`"
    )


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        "validate", "schema", "index", "plan", "apply", "status",
        "history", "explain", "serve", "watch",
    ]  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
        assert f"usage: reconcile {command}" in capsys.readouterr().out


def _raise(exc: BaseException) -> cli.Command:
    def run(args: argparse.Namespace) -> int:
        raise exc

    return run


def test_internal_error_is_a_bug_with_exit_three(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "cmd_schema", _raise(RuntimeError("boom")))
    assert cli.main(["schema"]) == ExitCode.BUG
    err = capsys.readouterr().err
    assert "This is a bug" in err and "boom" in err
    assert "Traceback" not in err
    assert cli.main(["--debug", "schema"]) == ExitCode.BUG
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "cmd_schema", _raise(KeyboardInterrupt()))
    assert cli.main(["schema"]) == ExitCode.INTERRUPTED


def test_logging_flags_set_level() -> None:
    import logging

    cli.main(["-q", "schema"])
    assert logging.getLogger("reconciler").level == logging.ERROR
    cli.main(["schema", "-v"])
    assert logging.getLogger("reconciler").level == logging.DEBUG


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
