"""The layering the docs describe is checked, not just written down.

- import contracts (``lint-imports``, configured in pyproject.toml): imports point
  downward; the engine imports no kind; only the transport and the server reach the
  network;
- only the store writes or deletes files: no module outside ``reconciler/store``
  calls a writing or deleting file API, but for the few that write files that are
  not channel content, each named here with the reason.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "reconciler"

# Attribute calls that write or delete a file or folder.
WRITING_METHODS = {
    "write_bytes",
    "write_text",
    "unlink",
    "mkdir",
    "rmdir",
    "touch",
    "symlink_to",
    "hardlink_to",
}
WRITING_FUNCTIONS = {
    ("os", "replace"),
    ("os", "rename"),
    ("os", "unlink"),
    ("os", "remove"),
    ("os", "rmdir"),
    ("os", "mkdir"),
    ("os", "makedirs"),
    ("shutil", "rmtree"),
    ("shutil", "move"),
    ("shutil", "copyfile"),
}

# Files that are not channel content, and why they may be written directly.
ALLOWED = {
    "reconciler/engine/report.py": "appends to $GITHUB_STEP_SUMMARY, the CI runner's file",
    "reconciler/faults.py": "the crash harness's trace file, only under test",
    "reconciler/kinds/conda/indexer.py": (
        "temporary copies of packages to read, computed outputs waiting to be published"
        " (not in a channel)"
    ),
    "reconciler/watch.py": "creates a channel's folder so that it can be watched",
    "reconciler/serve/server.py": "appends to the access log file given with --access-log",
    "reconciler/serve/shared.py": (
        "the private folder the processes of one server share: locks, failed fetches,"
        " metrics (not in a channel)"
    ),
    "reconciler/serve/workers.py": "removes that shared folder when the server stops",
}


def _writes(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in WRITING_FUNCTIONS:
                found.append((node.lineno, f"{owner}.{func.attr}"))
            elif owner not in ("os", "shutil", "str", "re") and func.attr in WRITING_METHODS:
                found.append((node.lineno, f".{func.attr}()"))
            elif func.attr == "open" and _writing_mode(node, 0):
                found.append((node.lineno, ".open(…, write)"))
        elif isinstance(func, ast.Name) and func.id == "open" and _writing_mode(node, 1):
            found.append((node.lineno, "open(…, write)"))
    return found


def _writing_mode(call: ast.Call, position: int) -> bool:
    mode = None
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        mode = call.args[position].value
    for keyword in call.keywords:
        if keyword.arg == "mode" and isinstance(keyword.value, ast.Constant):
            mode = keyword.value.value
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def test_only_the_store_writes_files() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if relative.startswith("reconciler/store/") or relative in ALLOWED:
            continue
        for line, what in _writes(ast.parse(path.read_text(), relative)):
            offenders.append(f"{relative}:{line}: {what}")
    assert offenders == []


def test_the_write_check_finds_writes() -> None:
    sample = "import os\nfrom pathlib import Path\nPath('x').write_bytes(b'')\n"
    sample += "os.replace('a', 'b')\n"
    sample += "open('f', 'w')\nPath('y').open('ab')\nPath('z').read_text()\n"
    assert [what for _, what in _writes(ast.parse(sample))] == [
        ".write_bytes()",
        "os.replace",
        "open(…, write)",
        ".open(…, write)",
    ]


LINT = "import sys, importlinter.cli as c; sys.exit(c.lint_imports_command())"


def test_import_contracts_hold() -> None:
    run = subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout
