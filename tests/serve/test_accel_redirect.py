"""``--accel-redirect``: a checked file handed back to nginx by its real path, only when
nginx asked for that, and never a file the checks refuse."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.serve.server import ServeOptions
from tests.packages import PackageSpec, build_package
from tests.pypi.dists import build_wheel
from tests.pypi.index_server import Offered, simple_index
from tests.serve.helpers import raw_get, running

TOKEN = "accel-reader-2b7e4c9d1f3a5e"
PREFIX = "/_reconcile-files"
ASKS = {"X-Sendfile-Type": "X-Accel-Redirect"}  # what the documented nginx block sets
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("accel")
    # A folder name with a space and a percent sign: the path must reach nginx quoted.
    private = tmp_path / "odd dir%41" / "internal"
    build_package(private, PackageSpec("secret", "1.0", subdir="linux-64"))
    build_package(private, PackageSpec("moved", "1.0", subdir="linux-64"))
    build_package(tmp_path / "open", PackageSpec("hello", "1.0", noarch="generic"))
    # A folder name that is not UTF-8 (reached through a link the config names), and a
    # real path longer than nginx reads in an upstream's headers.
    latin = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    build_package(latin, PackageSpec("latin", "1.0", noarch="generic"))
    (tmp_path / "latin").symlink_to(latin)
    deep = tmp_path.joinpath(*["d" * 200] * 16)
    build_package(deep, PackageSpec("deep", "1.0", noarch="generic"))
    wheel = build_wheel(tmp_path / "dists", "tiny", "1.0")
    os.environ["ACCEL_TEST_TOKEN"] = TOKEN
    try:
        with simple_index([Offered(wheel, "tiny")]) as upstream:
            config = tmp_path / "channels.yaml"
            config.write_text(
                "version: 1\nserve:\n  tokens:\n"
                "    - {name: readers, token_env: ACCEL_TEST_TOKEN, channels: [internal]}\n"
                "channels:\n"
                "  - {name: internal, access: private, path: 'odd dir%41/internal',"
                " subdirs: [linux-64]}\n"
                "  - {name: open, path: ./open}\n"
                "  - {name: latin, path: ./latin}\n"
                f"  - {{name: deep, path: '{deep}'}}\n"
                "  - name: py\n    kind: pypi\n    path: ./py\n    mirrors:\n"
                f"      - {{name: up, source: '{upstream.url}', projects: [tiny]}}\n"
            )
            assert cli.main(["apply", "-c", str(config)]) == 0
        # Indexed, then replaced by a link out of the channel.
        moved = private / "linux-64" / "moved-1.0-0.conda"
        moved.rename(tmp_path / "outside.conda")
        moved.symlink_to(tmp_path / "outside.conda")
        (private / "linux-64" / "dropped-1.0-0.conda").write_bytes(b"not indexed")
        # Indexed, then replaced by a link to a file still inside the channel.
        hello = tmp_path / "open" / "noarch" / "hello-1.0-0.conda"
        hello.rename(tmp_path / "open" / "noarch" / "kept.bin")
        hello.symlink_to("kept.bin")
        with running(config, ServeOptions(accel_redirect=PREFIX)) as server:
            yield {
                "url": server.url,
                "tmp": tmp_path,
                "private": private,
                "latin": latin,
                "deep": deep,
                "server": server,
                "config": config,
            }
    finally:
        os.environ.pop("ACCEL_TEST_TOKEN", None)


def _handed(path: Path) -> str:
    return PREFIX + urllib.parse.quote(os.fsencode(os.path.realpath(path)))


def test_a_checked_file_is_handed_to_nginx_by_its_real_path(served: dict[str, Any]) -> None:
    private = served["private"]
    package = "/internal/linux-64/secret-1.0-0.conda"
    response, body = raw_get(served["url"], package, {**ASKS, **BEARER})
    assert response.status == 200
    assert body == b""
    handed = response.getheader("X-Accel-Redirect")
    assert handed == _handed(private / "linux-64" / "secret-1.0-0.conda")
    assert "%20" in handed and "%2541" in handed  # nginx unquotes it back to the folder
    # A private channel's files: for the client's own cache, never a shared one.
    assert response.getheader("Cache-Control") == "private, max-age=31536000, immutable"
    index, _ = raw_get(served["url"], "/internal/linux-64/repodata.json", {**ASKS, **BEARER})
    assert index.getheader("X-Accel-Redirect") == _handed(private / "linux-64" / "repodata.json")
    assert index.getheader("Content-Type") == "application/json"
    assert index.getheader("Cache-Control") == "private, max-age=60"
    sent, _ = raw_get(served["url"], "/internal/linux-64/repodata.json", BEARER)
    assert sent.getheader("Cache-Control") == "private, max-age=60"
    public, _ = raw_get(served["url"], "/open/noarch/repodata.json", ASKS)
    assert public.getheader("Cache-Control") == "public, max-age=60"


def test_a_folder_name_that_is_not_utf8_is_quoted_byte_by_byte(served: dict[str, Any]) -> None:
    response, body = raw_get(served["url"], "/latin/noarch/latin-1.0-0.conda", ASKS)
    assert response.status == 200 and body == b""
    handed = response.getheader("X-Accel-Redirect")
    assert handed == _handed(served["latin"] / "noarch" / "latin-1.0-0.conda")
    assert "caf%E9/" in handed
    # Unquoted as nginx does, it is the file's path, byte for byte.
    named = urllib.parse.unquote_to_bytes(handed.removeprefix(PREFIX))
    assert (
        Path(os.fsdecode(named)).read_bytes()
        == (served["latin"] / "noarch" / "latin-1.0-0.conda").read_bytes()
    )


def test_a_path_too_long_for_nginx_is_sent_from_here(served: dict[str, Any]) -> None:
    response, body = raw_get(served["url"], "/deep/noarch/deep-1.0-0.conda", ASKS)
    assert response.status == 200
    assert response.getheader("X-Accel-Redirect") is None
    assert body == (served["deep"] / "noarch" / "deep-1.0-0.conda").read_bytes()


def test_without_nginx_asking_the_bytes_are_sent(served: dict[str, Any]) -> None:
    package = "/internal/linux-64/secret-1.0-0.conda"
    response, body = raw_get(served["url"], package, BEARER)
    assert response.getheader("X-Accel-Redirect") is None
    assert body == (served["private"] / "linux-64" / "secret-1.0-0.conda").read_bytes()
    # Another value of the header is not nginx's request either.
    other, body = raw_get(served["url"], package, {"X-Sendfile-Type": "X-Sendfile", **BEARER})
    assert other.getheader("X-Accel-Redirect") is None and body


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/internal/linux-64/secret-1.0-0.conda", {}, 401),  # no token: nothing handed
        ("/internal/linux-64/secret-1.0-0.conda", {"Authorization": "Bearer nope"}, 403),
        ("/internal/linux-64/absent-1.0-0.conda", BEARER, 404),
        ("/internal/linux-64/dropped-1.0-0.conda", BEARER, 404),  # on disk, not indexed
        ("/internal/linux-64/moved-1.0-0.conda", BEARER, 404),  # listed, a link out
        ("/open/.reconciler/state.json", {}, 404),
    ],
)
def test_refused_files_are_never_handed(
    served: dict[str, Any], path: str, headers: dict[str, str], status: int
) -> None:
    response, _ = raw_get(served["url"], path, {**ASKS, **headers})
    assert response.status == status
    assert response.getheader("X-Accel-Redirect") is None


def test_a_link_inside_the_channel_is_handed_as_its_target(served: dict[str, Any]) -> None:
    """nginx follows no link (``disable_symlinks on``): it is given where the link leads."""
    response, body = raw_get(served["url"], "/open/noarch/hello-1.0-0.conda", ASKS)
    assert response.status == 200 and body == b""
    assert response.getheader("X-Accel-Redirect") == _handed(
        served["tmp"] / "open" / "noarch" / "kept.bin"
    )


def test_negotiated_pages_are_sent_from_here(served: dict[str, Any]) -> None:
    """A PyPI page depends on the Accept header (Vary): nginx's static files cannot."""
    page, body = raw_get(served["url"], "/py/simple/tiny/", ASKS)
    assert page.status == 200 and b"tiny" in body
    assert page.getheader("X-Accel-Redirect") is None
    assert page.getheader("Vary") == "Accept"
    wheel = next((served["tmp"] / "py" / "packages" / "tiny").iterdir())
    response, body = raw_get(served["url"], f"/py/packages/tiny/{wheel.name}", ASKS)
    assert body == b"" and response.getheader("X-Accel-Redirect") == _handed(wheel)
    # A wheel never changes under its name, as nginx's block says for files on disk.
    assert response.getheader("Cache-Control") == "public, max-age=31536000, immutable"
    sent, _ = raw_get(served["url"], f"/py/packages/tiny/{wheel.name}")
    assert sent.getheader("Cache-Control") == "public, max-age=31536000, immutable"


@pytest.mark.parametrize("prefix", ["/internal", "/t", "/metrics/files", "/-"])
def test_a_prefix_hiding_a_channel_or_route_is_refused(
    served: dict[str, Any], prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["serve", "-c", str(served["config"]), "--port", "0", "--accel-redirect", prefix]
    )
    assert code != 0
    assert f"--accel-redirect {prefix}: nginx's internal location" in capsys.readouterr().err


def test_a_reload_adding_a_channel_at_the_prefix_is_refused(
    served: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    config: Path = served["config"]
    text = config.read_text()
    with running(config, ServeOptions(accel_redirect="/files")) as server:
        try:
            config.write_text(text + "  - {name: files, path: ./files}\n")
            assert server.app.reload() is False
            assert "files" not in server.channels and "open" in server.channels
            assert "nginx's internal location there would hide the channel 'files'" in caplog.text
            config.write_text(text + "  - {name: other, path: ./other}\n")
            assert server.app.reload() is True and "other" in server.channels
        finally:
            config.write_text(text)


@pytest.mark.parametrize("prefix", ["files", "/", "/a/../b", "/.hidden", "/a b", "/a?b"])
def test_a_prefix_that_is_no_location_is_refused(
    prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve", "--accel-redirect", prefix])
    assert stopped.value.code == 2
    assert "--accel-redirect" in capsys.readouterr().err
