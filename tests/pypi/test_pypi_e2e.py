"""PyPI channels end to end: a real upstream index on 127.0.0.1, `reconcile apply`,
`reconcile serve`, and pip installing and downloading from the result.

The tests with a ``where`` parameter run with the channel in a folder and in a bucket
of a real S3 server (moto's, on 127.0.0.1); pip reads a bucket channel through
`reconcile serve`, and every page must name only files stored with their sha256.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import requests

from reconciler import cli
from reconciler.config.models import load_config
from reconciler.serve.server import ChannelServer
from tests.pypi.dists import build_sdist, build_wheel
from tests.pypi.index_server import Offered, Upstream, simple_index
from tests.pypi.validate import (
    check_html_project_page,
    check_html_root,
    check_json_project_page,
    check_json_root,
)
from tests.stores import Channel, pypi_problems

pytestmark = pytest.mark.slow

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def _offered(tmp: Path) -> list[Offered]:
    out = tmp / "dists"
    return [
        Offered(build_wheel(out, "tiny", "1.0"), "tiny", upload_time="2024-01-01T00:00:00Z"),
        Offered(build_sdist(out, "tiny", "1.0"), "tiny", upload_time="2024-01-01T00:00:00Z"),
        Offered(
            build_wheel(out, "tiny", "1.1"),
            "tiny",
            requires_python=">=3.8",
            upload_time="2024-02-01T00:00:00Z",
        ),
        Offered(
            build_wheel(out, "tiny", "1.2"),
            "tiny",
            yanked="broken",
            upload_time="2024-03-01T00:00:00Z",
        ),
        Offered(build_wheel(out, "tiny", "2.0rc1"), "tiny", upload_time="2024-04-01T00:00:00Z"),
        Offered(
            build_wheel(out, "plat", "1.0", tag="py3-none-manylinux_2_17_x86_64"),
            "plat",
            upload_time="2024-01-01T00:00:00Z",
        ),
        Offered(build_wheel(out, "plat", "1.0", tag="py3-none-win_amd64"), "plat"),
        Offered(build_wheel(out, "plat", "1.0", tag="py3-none-any"), "plat"),
    ]


def _where(tmp: Path, request: pytest.FixtureRequest, where: str, mode: str) -> Channel:
    """The channel under test: ``./<mode>-channel``, or ``s3://<bucket>/<mode>-channel``."""
    if where == "disk":
        return Channel(f"./{mode}-channel", tmp / f"{mode}-channel")
    bucket = request.getfixturevalue("bucket")
    return Channel(f"s3://{bucket}/{mode}-channel", None)


def _stored(channel: Channel) -> set[str]:
    """Names of the files under packages/ (in every project's folder)."""
    store = channel.store
    return {
        info.name
        for project in store.list_dirs("packages")
        for info in store.list_files(f"packages/{project}")
    }


def _config(
    tmp: Path, upstream: Upstream, mode: str, extra: str = "", where: Channel | None = None
) -> Path:
    config = tmp / f"{mode}.yaml"
    path = where.where if where is not None else f"./{mode}-channel"
    config.write_text(
        f"""version: 1
channels:
  - name: py
    kind: pypi
    path: {path}
    deletion_grace: 0
    mirrors:
      - name: up
        source: {upstream.url}
        mode: {mode}
        retries: 0
        timeout: 10
        projects: [tiny, "plat==1.0"]
        filters:
          wheel_tags:
            exclude: [{{platform: "win*"}}]
{extra}"""
    )
    return config


@contextmanager
def _serving(config: Path) -> Iterator[str]:
    server = ChannelServer(("127.0.0.1", 0), load_config(config))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", NO_PROXY="*")
    command = [sys.executable, "-m", "pip", *args, "--isolated", "--no-cache-dir", "--no-input"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def _installed_version(target: Path, module: str) -> str:
    text = (target / module / "__init__.py").read_text()
    return text.split('"')[1]


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._attrs: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._attrs = dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self.anchors.append((self._attrs, data))
            self._attrs = None


def _check_pages(where: Channel | Path, offered: list[Offered]) -> dict[str, set[str]]:
    """Validate every page against the files; returns the filenames listed per project."""
    if isinstance(where, Path):
        where = Channel(str(where), where)
    by_name = {o.path.name: o for o in offered}
    listed: dict[str, set[str]] = {}

    def read(key: str) -> bytes:
        data = where.read(key)
        assert data is not None, key
        return data

    root = orjson.loads(read("simple/index.json"))
    assert root["meta"]["api-version"].startswith("1.")
    for project in [p["name"] for p in root["projects"]]:
        page = orjson.loads(read(f"simple/{project}/index.json"))
        assert page["name"] == project
        names = set()
        for entry in page["files"]:
            source = by_name[entry["filename"]]
            data = source.path.read_bytes()
            assert entry["hashes"]["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry.get("size", len(data)) == len(data)  # HTML upstreams give no size
            assert entry["yanked"] == source.yanked
            if source.requires_python:
                assert entry["requires-python"] == source.requires_python
            names.add(entry["filename"])
        parser = _Anchors()
        parser.feed(read(f"simple/{project}/index.html").decode())
        html_names = set()
        for attrs, text in parser.anchors:
            href = attrs["href"] or ""
            assert href.split("#")[0].endswith("/" + text)
            digest = hashlib.sha256(by_name[text].path.read_bytes()).hexdigest()
            assert href.split("#")[1] == f"sha256={digest}"
            html_names.add(text)
        assert html_names == names
        listed[project] = names
        # And by validators written from the PEPs alone.
        folder = where.folder / "packages" / project if where.folder is not None else None
        files_dir = folder if folder and all((folder / n).is_file() for n in names) else None
        check_json_project_page(page, files_dir, project=project)
        check_html_project_page(
            read(f"simple/{project}/index.html").decode(), files_dir, project=project
        )
    check_json_root(root)
    check_html_root(read("simple/index.html").decode())
    return listed


@pytest.mark.parametrize(
    ("mode", "html_only", "where"),
    [
        ("active", False, "disk"),
        ("active", True, "disk"),
        ("passive", False, "disk"),
        ("passive", True, "disk"),
        ("active", False, "s3"),
        ("passive", False, "s3"),
    ],
    ids=lambda v: {False: "json-upstream", True: "html-upstream"}.get(v, v),
)
def test_pip_installs_from_a_mirrored_pypi_channel(
    tmp_path: Path, request: pytest.FixtureRequest, mode: str, html_only: bool, where: str
) -> None:
    offered = _offered(tmp_path)
    channel = _where(tmp_path, request, where, mode)
    with simple_index(offered, html_only=html_only) as upstream:
        config = _config(tmp_path, upstream, mode, where=channel)
        assert cli.main(["apply", "-c", str(config)]) == 0
        listed = _check_pages(channel, offered)
        # Excluded: the pre-release, the yanked file, the Windows wheel.
        assert listed == {
            "tiny": {
                "tiny-1.0-py3-none-any.whl",
                "tiny-1.0.tar.gz",
                "tiny-1.1-py3-none-any.whl",
            },
            "plat": {"plat-1.0-py3-none-manylinux_2_17_x86_64.whl", "plat-1.0-py3-none-any.whl"},
        }
        files = _stored(channel)
        passive = {f"{p}/{n}" for p, names in listed.items() for n in names}
        assert pypi_problems(channel.store, passive if mode == "passive" else ()) == []
        if mode == "active":
            assert "tiny-1.1-py3-none-any.whl" in files
            assert "tiny-1.1-py3-none-any.whl.metadata" in files
            assert "tiny-1.2-py3-none-any.whl" not in files
        else:
            assert files == set()
        assert cli.main(["plan", "-c", str(config), "--detailed-exitcode"]) == 0

        with _serving(config) as url:
            index = f"{url}/py/simple/"
            response = requests.get(index + "tiny/", headers={"Accept": JSON_TYPE}, timeout=10)
            assert response.headers["Content-Type"] == JSON_TYPE
            assert response.headers["Vary"] == "Accept"
            target = tmp_path / "site"
            _pip("install", "--index-url", index, "--target", str(target), "tiny")
            assert _installed_version(target, "tiny") == "1.1"
            _pip("install", "--index-url", index, "--target", str(target), "--upgrade", "plat")
            wheels = tmp_path / "wheels"
            result = _pip(
                "download",
                "--index-url",
                index,
                "--dest",
                str(wheels),
                "--no-deps",
                "--only-binary",
                ":all:",
                "tiny==1.0",
            )
            assert (wheels / "tiny-1.0-py3-none-any.whl").is_file(), result.stdout
            sdists = tmp_path / "sdists"
            sdists.mkdir()
            sdist = requests.get(f"{url}/py/packages/tiny/tiny-1.0.tar.gz", timeout=10)
            assert sdist.status_code == 200
            assert sdist.content == (tmp_path / "dists" / "tiny-1.0.tar.gz").read_bytes()
            # Excluded versions are not there: pinning one fails.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            failed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--isolated",
                    "--no-cache-dir",
                    "--index-url",
                    index,
                    "--dest",
                    str(wheels),
                    "--no-deps",
                    "tiny==2.0rc1",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
            )
            assert failed.returncode != 0
            assert "No matching distribution" in failed.stderr
        if mode == "passive":
            fetched = _stored(channel)
            assert "tiny-1.1-py3-none-any.whl" in fetched
            assert "tiny-1.0.tar.gz" in fetched
            assert "tiny-1.1-py3-none-any.whl.metadata" in fetched or html_only


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_upstream_changes_are_planned_and_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, where: str
) -> None:
    offered = _offered(tmp_path)
    channel = _where(tmp_path, request, where, "active")
    with simple_index(offered) as upstream:
        config = _config(tmp_path, upstream, "active", "          latest: 1\n", channel)
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert _check_pages(channel, offered)["tiny"] == {"tiny-1.1-py3-none-any.whl"}
        # Upstream yanks 1.1 and publishes 1.3: the plan says so, apply converges.
        upstream.files = [o for o in offered if "1.1" not in o.path.name]
        upstream.files.append(Offered(build_wheel(tmp_path / "dists", "tiny", "1.3"), "tiny"))
        capsys.readouterr()
        assert cli.main(["plan", "-c", str(config), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        actions = {(a["kind"], a["name"]) for c in plan["channels"] for a in c["actions"]}
        assert ("add", "tiny-1.3-py3-none-any.whl") in actions
        assert ("remove", "tiny-1.1-py3-none-any.whl") in actions
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert _check_pages(channel, upstream.files)["tiny"] == {"tiny-1.3-py3-none-any.whl"}
        assert not channel.exists("packages/tiny/tiny-1.1-py3-none-any.whl")  # grace 0
        assert not channel.exists("packages/tiny/tiny-1.1-py3-none-any.whl.metadata")
        assert pypi_problems(channel.store) == []
        assert cli.main(["plan", "-c", str(config), "--detailed-exitcode"]) == 0
        if where == "s3":  # a second apply writes nothing, and reads no package
            s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")
            s3.reset(bucket)
            assert cli.main(["apply", "-c", str(config)]) == 0
            counts = s3.counts(bucket)
            assert counts["PUT"] == counts["DELETE"] == counts["GET_PACKAGE"] == 0, counts
        capsys.readouterr()
        assert cli.main(["explain", "-c", str(config), "tiny-1.2-py3-none-any.whl"]) == 0
        out = capsys.readouterr().out
        assert "out — yanked: broken (mirror up: yanked: false)" in out


def test_a_file_that_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    offered = _offered(tmp_path)
    with simple_index(offered) as upstream:
        config = _config(tmp_path, upstream, "active")
        upstream.wrong_hash = {"tiny-1.1-py3-none-any.whl"}
        assert cli.main(["apply", "-c", str(config)]) == 1  # the run failed...
        channel = tmp_path / "active-channel"
        listed = _check_pages(channel, [o for o in offered])
        # ...but what verified is published, and the bad file is neither listed nor stored.
        assert "tiny-1.1-py3-none-any.whl" not in listed["tiny"]
        assert "tiny-1.0-py3-none-any.whl" in listed["tiny"]
        stored = {p.name for p in (channel / "packages").rglob("*")}
        assert "tiny-1.1-py3-none-any.whl" not in stored
        assert not [name for name in stored if name.startswith(".")]
        history = (channel / ".reconciler" / "history.jsonl").read_text()
        assert "sha256 mismatch" in history
        # Once the upstream is fixed, the next apply converges.
        upstream.wrong_hash = set()
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert "tiny-1.1-py3-none-any.whl" in _check_pages(channel, offered)["tiny"]
        assert cli.main(["plan", "-c", str(config), "--detailed-exitcode"]) == 0


def test_files_from_other_hosts_are_refused(tmp_path: Path) -> None:
    offered = _offered(tmp_path)
    page = {
        "meta": {"api-version": "1.1"},
        "name": "tiny",
        "files": [
            {
                "filename": offered[0].path.name,
                "url": f"http://localhost:1/files/{offered[0].path.name}",
                "hashes": {"sha256": hashlib.sha256(offered[0].path.read_bytes()).hexdigest()},
            }
        ],
    }
    source = tmp_path / "static" / "tiny"
    source.mkdir(parents=True)
    (source / "index.json").write_bytes(orjson.dumps(page))
    with simple_index(offered) as upstream:
        # An http upstream whose page links to another host: refused, naming the host.
        config = _config(tmp_path, upstream, "active")
        text = config.read_text().replace(upstream.url, (tmp_path / "static").as_uri())
        config.write_text(text.replace('"plat==1.0"', ""))
        assert cli.main(["apply", "-c", str(config)]) == 1
        history = (tmp_path / "active-channel" / ".reconciler" / "history.jsonl").read_text()
        assert "a folder source may only link to its files" in history

        # An http index linking to another host: refused unless allowed_hosts names it.
        port = upstream.url.split(":")[2].split("/")[0]
        upstream.files_base = f"http://localhost:{port}"
        config = _config(tmp_path, upstream, "active")
        assert cli.main(["apply", "-c", str(config)]) == 1
        history = (tmp_path / "active-channel" / ".reconciler" / "history.jsonl").read_text()
        assert "host localhost is not the source's and not in allowed_hosts" in history
        assert not (
            tmp_path / "active-channel" / "packages" / "tiny" / offered[0].path.name
        ).exists()
        allowed = config.read_text().replace(
            "        retries: 0\n", "        retries: 0\n        allowed_hosts: [localhost]\n"
        )
        config.write_text(allowed)
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert (tmp_path / "active-channel" / "packages" / "tiny" / offered[0].path.name).is_file()


def test_pages_are_fetched_conditionally_and_files_from_another_allowed_host(
    tmp_path: Path,
) -> None:
    """Against the independent fixture index: ETags give 304s on the second run, and
    files linked on a second server are fetched only once its host is allowed."""
    from tests.pypi.builder import build_wheel as fixture_wheel
    from tests.pypi.upstream import serve_files, serve_simple_index

    files = tmp_path / "files"
    fixture_wheel(files, "tiny", "1.0")
    fixture_wheel(files, "tiny", "1.1")
    with serve_files(files) as other, serve_simple_index(files) as index:
        config = tmp_path / "c.yaml"
        config.write_text(
            "version: 1\nchannels:\n  - name: py\n    kind: pypi\n    path: ./py\n"
            f"    mirrors:\n      - {{name: up, source: '{index.url}', retries: 0, timeout: 10,"
            " projects: [tiny]}\n"
        )
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert cli.main(["apply", "-c", str(config)]) == 0
        pages = [r for r in index.requests if r.path.rstrip("/").endswith("/simple/tiny")]
        assert pages[-1].if_none_match and pages[-1].status == 304
        assert cli.main(["plan", "-c", str(config), "--detailed-exitcode"]) == 0
        # Files moved to a second host (another port counts as the same host name, so use
        # "localhost" for it): refused until allowed.
        index.files_base_url = other.url.replace("127.0.0.1", "localhost")
        fixture_wheel(files, "tiny", "1.2")
        index.rescan()
        assert cli.main(["apply", "-c", str(config)]) == 1
        assert not (tmp_path / "py" / "packages" / "tiny" / "tiny-1.2-py3-none-any.whl").exists()
        config.write_text(
            config.read_text().replace("timeout: 10,", "timeout: 10, allowed_hosts: [localhost],")
        )
        assert cli.main(["apply", "-c", str(config)]) == 0
        assert (tmp_path / "py" / "packages" / "tiny" / "tiny-1.2-py3-none-any.whl").is_file()
