"""The container image definition (Dockerfile, .dockerignore).

No Docker engine runs here, so the image is not built: the Dockerfile is read, what it
runs is checked with the CLI's own parser, and its HEALTHCHECK command is run as written
against a real `reconcile serve`.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler import cli
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
RECONCILE = Path(sys.executable).parent / "reconcile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments
    dropped, as Docker reads them."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments, parser directives, and comments inside a continuation
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    assert not current.strip(), "the last instruction ends with a backslash"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    rest = stage.last("HEALTHCHECK")
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.strip()
    assert rest.startswith("CMD "), "HEALTHCHECK CMD in exec form"
    return options, exec_form(rest[4:])


def test_image_runs_serve_as_a_user_that_is_not_root(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    args, stages = dockerfile
    final = stages[-1]
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim", final.base)
    assert re.fullmatch(r"3\.\d+", args["PYTHON_VERSION"])
    # the user: numeric, not root, and created in this stage with that uid
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) != 0, user
    assert any(f"useradd --system --uid {uid} --gid {gid}" in run for run in final.all("RUN"))
    keywords = [kw for kw, _ in final.instructions]
    after_user = keywords[keywords.index("USER") + 1 :]
    assert "RUN" not in after_user and "USER" not in after_user
    # what it runs: `reconcile serve` on 0.0.0.0:8000, the config at /data/channels.yaml
    argv = exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))
    assert argv[0] == "reconcile"
    parsed = cli.build_parser().parse_args(argv[1:])
    assert parsed.command == "serve"
    assert (parsed.host, parsed.port) == ("0.0.0.0", 8000)
    assert parsed.config == Path("/data/channels.yaml")
    assert final.last("WORKDIR") == "/data"
    assert final.all("EXPOSE") == ["8000"]
    # `reconcile` and `python` come from the venv that the first stage filled from the wheel
    assert "/opt/conda-reconcile/bin" in env_of(final)["PATH"].split(":")[0]
    install = stages[0]
    assert install.name == "install" and install.base == final.base
    assert install.all("COPY") == ["dist/ /tmp/dist/"]
    assert "pip install" in install.last("RUN") and "/tmp/dist/conda_reconcile-*.whl" in (
        install.last("RUN")
    )
    assert final.all("COPY") == ["--from=install /opt/conda-reconcile /opt/conda-reconcile"]
    documented = (REPO_ROOT / "docs" / "install.md").read_text()
    assert "/data/channels.yaml" in documented


def test_healthcheck_uses_python_not_curl(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    options, argv = healthcheck(stages[-1])
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2]
    assert {"interval", "timeout", "retries"} <= set(options)
    for stage in stages:
        for _, args in stage.instructions:
            assert "curl" not in args and "wget" not in args
    url = env_of(stages[-1])["RECONCILE_HEALTHCHECK_URL"]
    assert url == "http://127.0.0.1:8000/api/status"  # the port CMD serves on


def run_healthcheck(
    dockerfile: tuple[dict[str, str], list[Stage]], url: str
) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command as written; `python` is this interpreter (in the image, the
    venv's), and the URL is the server's, as RECONCILE_HEALTHCHECK_URL lets it be."""
    _, argv = healthcheck(dockerfile[1][-1])
    env = dict(os.environ, RECONCILE_HEALTHCHECK_URL=url)
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A real `reconcile serve` on a free port of 127.0.0.1."""
    config = tmp_path / "channels.yaml"
    config.write_text("version: 1\nchannels:\n  - {name: chan, path: ./chan}\n")
    assert cli.main(["apply", "-c", str(config)]) == 0
    process = subprocess.Popen(
        [str(RECONCILE), "serve", "-c", str(config), "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "serving 1 channel(s) on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_healthcheck_passes_while_serving_and_fails_when_down(
    dockerfile: tuple[dict[str, str], list[Stage]],
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served
    check = run_healthcheck(dockerfile, f"{url}/api/status")
    assert check.returncode == 0, check.stderr
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    down = run_healthcheck(dockerfile, f"{url}/api/status")
    assert down.returncode != 0
    assert "Connection refused" in down.stderr


def test_healthcheck_fails_on_an_error_status(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/api/status" else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert run_healthcheck(dockerfile, f"{url}/api/status").returncode != 0  # 503
        assert run_healthcheck(dockerfile, f"{url}/other").returncode != 0  # 204, not 200
    finally:
        server.shutdown()
        server.server_close()


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching
    the path or a folder above it decides; `!` brings a path back."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) and p.count("/") == pattern.count("/")
               for p in prefixes):  # fmt: skip
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_the_wheels() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not dockerignored(patterns, "dist/conda_reconcile-1.2.0-py3-none-any.whl")
    for path in [
        ".git/config",
        ".venv/bin/python",
        ".cache/actionlint/x",
        "reconciler/cli.py",
        "tests/conftest.py",
        "channels.yaml",
        "examples/channels/internal/linux-64/repodata.json",
        "dist/conda_reconcile-1.2.0.tar.gz",
        "Dockerfile",
    ]:
        assert dockerignored(patterns, path), path
