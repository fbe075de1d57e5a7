"""Private channels: read tokens the ways real clients send them (rattler, pip, curl-like
requests), and never a token in a log line, a page, /api/status or /metrics."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rattler
import requests

from reconciler import cli
from reconciler.config.checks import check_config_text
from reconciler.config.diagnostics import Severity
from reconciler.serve.server import ServeOptions
from tests.packages import PackageSpec, build_package
from tests.pypi.dists import build_wheel
from tests.pypi.index_server import Offered, simple_index
from tests.serve.helpers import raw_get, running

TOKEN = "reader-7f3a9c1e5b2d4a6f8e0c"
OTHER = "other-0b1c2d3e4f5a6b7c8d9e"
WRONG = "wrong-0000000000000000000000"


def _config(tmp_path: Path, upstream_url: str) -> Path:
    config = tmp_path / "channels.yaml"
    config.write_text(
        f"""version: 1
serve:
  tokens:
    - {{name: readers, token_env: SERVE_TOKEN_READERS, channels: [internal, py]}}
    - {{name: others, token_env: SERVE_TOKEN_OTHERS, channels: [other]}}
channels:
  - {{name: internal, access: private, path: ./internal, subdirs: [linux-64]}}
  - {{name: other, access: private, path: ./other}}
  - {{name: open, path: ./open}}
  - name: py
    kind: pypi
    access: private
    path: ./py
    mirrors:
      - {{name: up, source: '{upstream_url}', retries: 0, timeout: 10, projects: [tiny]}}
"""
    )
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("auth")
    internal = tmp_path / "internal"
    build_package(internal, PackageSpec("python", "3.12.0", subdir="linux-64"))
    build_package(internal, PackageSpec("lib", "1.0", subdir="linux-64", depends=["python"]))
    build_package(internal, PackageSpec("app", "2.0", subdir="linux-64", depends=["lib >=1"]))
    build_package(tmp_path / "other", PackageSpec("secret", "1.0", noarch="generic"))
    build_package(tmp_path / "open", PackageSpec("hello", "1.0", noarch="generic"))
    wheel = build_wheel(tmp_path / "dists", "tiny", "1.0")
    env = {"SERVE_TOKEN_READERS": TOKEN, "SERVE_TOKEN_OTHERS": OTHER}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with simple_index([Offered(wheel, "tiny")]) as upstream:
            config = _config(tmp_path, upstream.url)
            assert cli.main(["apply", "-c", str(config)]) == 0
        log = tmp_path / "access.log"
        with running(config, ServeOptions(access_log=str(log))) as server:
            yield {"url": server.url, "server": server, "tmp": tmp_path, "log": log}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


REPODATA = "/internal/linux-64/repodata.json"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (REPODATA, {}, 401),
        (REPODATA, {"Authorization": f"Bearer {TOKEN}"}, 200),
        (REPODATA, {"Authorization": _basic("anyone", TOKEN)}, 200),
        (REPODATA, {"Authorization": _basic(TOKEN, "")}, 200),  # https://TOKEN@host/...
        (f"/t/{TOKEN}{REPODATA}", {}, 200),
        (REPODATA, {"Authorization": f"Bearer {WRONG}"}, 403),
        (REPODATA, {"Authorization": _basic("anyone", WRONG)}, 403),
        (REPODATA, {"Authorization": "Basic !!!not-base64"}, 403),
        (f"/t/{WRONG}{REPODATA}", {}, 403),
        (REPODATA, {"Authorization": f"Bearer {OTHER}"}, 403),  # valid, not granted
        (f"/t/{OTHER}/other/noarch/repodata.json", {}, 200),
        ("/internal/linux-64/app-2.0-0.conda", {}, 401),
        ("/internal/linux-64/app-2.0-0.conda", {"Authorization": f"Bearer {TOKEN}"}, 200),
        ("/py/simple/tiny/", {}, 401),
        ("/py/simple/tiny/", {"Authorization": _basic("pip", TOKEN)}, 200),
        ("/py/packages/tiny/tiny-1.0-py3-none-any.whl", {}, 401),
        ("/open/noarch/repodata.json", {}, 200),
        ("/open/noarch/repodata.json", {"Authorization": f"Bearer {WRONG}"}, 200),
        (f"/t/{WRONG}/open/noarch/repodata.json", {}, 200),
        (f"/t/{TOKEN}/nochannel/noarch/repodata.json", {}, 404),
        ("/nochannel/noarch/repodata.json", {}, 404),
    ],
)
def test_status_codes(
    served: dict[str, Any], path: str, headers: dict[str, str], status: int
) -> None:
    response, body = raw_get(served["url"], path, headers)
    assert response.status == status, (path, body[:200])
    if status == 401:
        assert response.getheader("WWW-Authenticate", "").startswith('Basic realm="')
    for secret in (TOKEN, OTHER, WRONG):
        assert secret not in body.decode(errors="replace")


def test_rattler_with_a_conda_token_url_and_with_a_bearer_header(
    served: dict[str, Any], tmp_path: Path
) -> None:
    url = served["url"]
    from tests.client import solve

    records = solve(f"{url}/t/{TOKEN}/internal", ["app"], "linux-64", tmp_path / "c1")
    assert records["app"] == "app-2.0-0.conda" and records["lib"] == "lib-1.0-0.conda"

    client = rattler.Client(headers={"Authorization": f"Bearer {TOKEN}"})
    gateway = rattler.Gateway(cache_dir=tmp_path / "c2", client=client)
    solved = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(f"{url}/internal")],
            specs=["app"],
            gateway=gateway,
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
    )
    assert sorted(r.name.normalized for r in solved) == ["app", "lib", "python"]
    # Package URLs keep the token: a download through the solved record's URL works.
    app = next(r for r in solved if r.name.normalized == "app")
    response = requests.get(str(app.url), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200
    assert response.content == (served["tmp"] / "internal/linux-64/app-2.0-0.conda").read_bytes()

    # Without a token the client cannot read the channel.
    with pytest.raises(Exception, match=r"401|Unauthorized|unauthorized"):
        solve(f"{url}/internal", ["app"], "linux-64", tmp_path / "c3")


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", NO_PROXY="*")
    command = [sys.executable, "-m", "pip", *args, "--isolated", "--no-cache-dir", "--no-input"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


@pytest.mark.slow
def test_pip_installs_with_the_token_as_basic_password(
    served: dict[str, Any], tmp_path: Path
) -> None:
    host = served["url"].removeprefix("http://")
    target = tmp_path / "site"
    ok = _pip(
        "install", "--index-url", f"http://user:{TOKEN}@{host}/py/simple/",
        "--target", str(target), "tiny",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert (target / "tiny" / "__init__.py").is_file()
    denied = _pip(
        "download", "--index-url", f"http://{host}/py/simple/", "--dest", str(tmp_path / "d"),
        "--no-deps", "tiny",
    )  # fmt: skip
    assert denied.returncode != 0
    assert "401" in denied.stderr + denied.stdout or "No matching" in denied.stderr
    wrong = _pip(
        "download", "--index-url", f"http://user:{WRONG}@{host}/py/simple/",
        "--dest", str(tmp_path / "d"), "--no-deps", "tiny",
    )  # fmt: skip
    assert wrong.returncode != 0
    assert WRONG not in served["server"].access_log.__repr__()


def test_status_page_shows_private_channels_only_to_their_tokens(served: dict[str, Any]) -> None:
    url = served["url"]
    anonymous = requests.get(f"{url}/api/status", timeout=30).json()
    channels = {c["name"]: c for c in anonymous["channels"]}
    assert channels["internal"] == {"name": "internal", "access": "private"}
    assert channels["py"] == {"name": "py", "access": "private"}
    assert channels["open"]["access"] == "public" and channels["open"]["packages"]
    page = requests.get(f"{url}/", timeout=30).text
    assert '<section class="channel private" id="channel-internal">' in page
    assert str(served["tmp"] / "internal") not in page

    mine = requests.get(f"{url}/t/{TOKEN}/api/status", timeout=30).json()
    channels = {c["name"]: c for c in mine["channels"]}
    assert channels["internal"]["packages"] == {"linux-64": 3, "noarch": 0}
    assert channels["other"] == {"name": "other", "access": "private"}  # not granted
    page = requests.get(f"{url}/t/{TOKEN}/", timeout=30).text
    # Links stay relative, so they keep the token prefix.
    assert 'href="api/status"' in page and 'href="internal/"' in page
    assert 'href="/' not in page
    assert requests.get(f"{url}/t/{TOKEN}/internal/", timeout=30).status_code == 200
    bare = requests.get(f"{url}/t/{TOKEN}", timeout=30, allow_redirects=False)
    assert bare.status_code == 301 and bare.headers["Location"] == f"/t/{TOKEN}/"


def test_pypi_redirects_keep_the_token_prefix(served: dict[str, Any]) -> None:
    response = requests.get(
        f"{served['url']}/t/{TOKEN}/py/simple/Tiny/", timeout=30, allow_redirects=False
    )
    assert response.status_code == 301
    assert response.headers["Location"] == f"/t/{TOKEN}/py/simple/tiny/"


def test_tokens_never_appear_in_logs_status_or_metrics(served: dict[str, Any]) -> None:
    url = served["url"]
    requests.get(f"{url}/t/{TOKEN}/internal/linux-64/repodata.json", timeout=30)
    requests.get(f"{url}/t/{WRONG}/internal/linux-64/repodata.json", timeout=30)
    requests.get(f"{url}/internal/noarch/repodata.json", auth=("u", TOKEN), timeout=30)
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    served["server"].app.access_log.flush()
    logged = served["log"].read_text()
    recent = "\n".join(served["server"].access_log)
    assert "/t/<token>/internal/linux-64/repodata.json" in logged
    assert ' readers "GET ' in logged  # the token's name, never its secret
    texts = {
        "metrics": metrics,
        "access log": logged,
        "recent": recent,
        "status": requests.get(f"{url}/t/{TOKEN}/api/status", timeout=30).text,
        "page": requests.get(f"{url}/t/{TOKEN}/", timeout=30).text,
    }
    for where, text in texts.items():
        for secret in (TOKEN, OTHER, WRONG):
            assert secret not in text, where
    assert 'reconcile_serve_requests_total{channel="internal",code="200",kind="conda"}' in metrics
    assert 'code="401"' in metrics and 'code="403"' in metrics
    # URLs whose parsing is remembered: never one that carries a token.
    remembered = served["server"].app._segments
    assert "/internal/noarch/repodata.json" in remembered
    assert not [path for path in remembered if any(s in path for s in (TOKEN, OTHER, WRONG))]


# -- configuration ----------------------------------------------------------------------

CONFIG = """version: 1
serve:
  tokens:
    - name: readers
      token_env: SERVE_TOKEN_READERS
      channels: [internal, interna1]
channels:
  - {name: internal, access: private, path: ./a}
  - {name: hidden, access: private, path: ./b}
  - {name: open, path: ./c}
"""


def _messages(environ: dict[str, str], serving: bool) -> list[str]:
    result = check_config_text(CONFIG, Path("/x/channels.yaml"), environ=environ, serving=serving)
    return [d.format() for d in result.diagnostics if d.severity is Severity.ERROR] + [
        "warning " + d.format() for d in result.diagnostics if d.severity is Severity.WARNING
    ]


def test_token_configuration_errors_point_at_their_keys() -> None:
    messages = _messages({}, serving=True)
    assert (
        "/x/channels.yaml:6: serve.tokens[0].channels[1]: unknown channel 'interna1' "
        "(did you mean 'internal'?)" in messages
    )
    assert (
        "/x/channels.yaml:5: serve.tokens[0].token_env: environment variable "
        "SERVE_TOKEN_READERS (token_env) is not set" in messages
    )
    assert any(
        m.startswith("/x/channels.yaml:9: channels[1].access: private channel 'hidden' is "
                     "granted by no token")
        for m in messages
    ), messages  # fmt: skip
    # Not serving (validate, plan): an unset variable is a warning only.
    relaxed = _messages({}, serving=False)
    assert not any("is not set" in m and not m.startswith("warning") for m in relaxed)
    assert any(m.startswith("warning") and "SERVE_TOKEN_READERS" in m for m in relaxed)
    # Set, but short: a warning.
    short = _messages({"SERVE_TOKEN_READERS": "abc"}, serving=True)
    assert any(m.startswith("warning") and "3 characters" in m for m in short)


def test_serve_refuses_to_start_without_the_token_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SERVE_TOKEN_READERS", raising=False)
    config = tmp_path / "channels.yaml"
    config.write_text(
        "version: 1\nserve:\n  tokens:\n"
        "    - {name: readers, token_env: SERVE_TOKEN_READERS, channels: [internal]}\n"
        "channels:\n  - {name: internal, access: private, path: ./a}\n"
    )
    assert cli.main(["serve", "-c", str(config), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "serve.tokens[0].token_env: environment variable SERVE_TOKEN_READERS" in err
    assert cli.main(["validate", "-c", str(config)]) == 0


def test_a_channel_named_t_is_refused() -> None:
    text = "version: 1\nchannels:\n  - {name: t, path: ./t}\n"
    result = check_config_text(text, Path("/x/c.yaml"), environ={}, serving=True)
    assert [d.format() for d in result.diagnostics] == [
        "/x/c.yaml:3: channels[0].name: a channel named 't' cannot be served: "
        "/t/<token>/ starts conda's token URLs"
    ]
