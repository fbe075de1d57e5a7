"""The PyPI test fixtures are real: pip installs what the builder makes from what the
upstream serves, and the validators accept good pages and reject broken ones."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.pypi.builder import (
    build_sdist,
    build_wheel,
    core_metadata,
    expand_tags,
    write_core_metadata,
)
from tests.pypi.pip_client import PipError, pip_download, pip_install
from tests.pypi.upstream import (
    HTML_V1,
    JSON_V1,
    UpstreamFile,
    format_upload_time,
    negotiate,
    serve_files,
    serve_simple_index,
)
from tests.pypi.validate import (
    PageError,
    check_html_project_page,
    check_html_root,
    check_json_project_page,
    check_json_root,
)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_RAW = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _get(
    url: str, accept: str | None = None, *, follow: bool = True, if_none_match: str | None = None
) -> tuple[int, Message, bytes]:
    """GET on loopback without proxies; HTTP errors come back as statuses."""
    headers: dict[str, str] = {}
    if if_none_match is not None:
        headers["If-None-Match"] = if_none_match
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        with (_NO_PROXY if follow else _RAW).open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of real distributions shared by the module (building is cheap, but
    the same bytes everywhere make failures easier to read)."""
    out = tmp_path_factory.mktemp("dists")
    for version in ("1.0", "1.1", "1.2", "2.0rc1"):
        build_wheel(out, "tiny", version)
    # 1.3's own metadata allows any Python: only the page's requires-python keeps pip off.
    build_wheel(out, "tiny", "1.3")
    build_sdist(out, "tiny", "1.1")
    build_wheel(out, "plat", "1.0", tag="py3-none-win_amd64")
    build_wheel(out, "plat", "1.0")
    build_wheel(out, "only-yanked", "1.0")
    for wheel in out.glob("*.whl"):
        write_core_metadata(wheel)
    return out


def _offered(dists: Path) -> list[UpstreamFile]:
    """The served set: a yanked release, one pip may not pick for its Python, a
    pre-release and a project whose only release is yanked."""
    special: dict[str, dict[str, Any]] = {
        "tiny-1.2-py3-none-any.whl": {"yanked": "broken build"},
        "tiny-1.3-py3-none-any.whl": {"requires_python": ">=4"},
        "only_yanked-1.0-py3-none-any.whl": {"yanked": True},
        "tiny-1.0-py3-none-any.whl": {"upload_time": datetime(2024, 1, 2, tzinfo=timezone.utc)},
    }
    return [
        UpstreamFile(path, **special.get(path.name, {}))
        for path in sorted(dists.iterdir())
        if not path.name.endswith(".metadata")
    ]


# -- builder ---------------------------------------------------------------------------


def test_wheel_is_a_valid_deterministic_pep427_archive(tmp_path: Path) -> None:
    tag = "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64"
    first = build_wheel(
        tmp_path / "a", "Tiny.Pkg", "1.0", tag=tag, requires_python=">=3.8", requires_dist=["b>1"]
    )
    second = build_wheel(
        tmp_path / "b", "Tiny.Pkg", "1.0", tag=tag, requires_python=">=3.8", requires_dist=["b>1"]
    )
    assert first.name == f"tiny_pkg-1.0-{tag}.whl"
    assert first.read_bytes() == second.read_bytes()
    assert expand_tags("py2.py3-none-any") == ["py2-none-any", "py3-none-any"]

    with zipfile.ZipFile(first) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names[-1] == "tiny_pkg-1.0.dist-info/RECORD"
        assert archive.read("tiny_pkg/__init__.py") == b'__version__ = "1.0"\n'
        wheel = archive.read("tiny_pkg-1.0.dist-info/WHEEL").decode()
        assert "Wheel-Version: 1.0\n" in wheel
        assert "Root-Is-Purelib: false\n" in wheel
        assert [line for line in wheel.splitlines() if line.startswith("Tag:")] == [
            "Tag: cp311-cp311-manylinux_2_17_x86_64",
            "Tag: cp311-cp311-manylinux2014_x86_64",
        ]
        rows = list(csv.reader(io.StringIO(archive.read(names[-1]).decode())))
        assert sorted(row[0] for row in rows) == sorted(names)
        for path, digest, size in rows:
            if path == names[-1]:
                assert (digest, size) == ("", "")
                continue
            data = archive.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode()
            assert int(size) == len(data)
        assert {info.date_time for info in archive.infolist()} == {(2024, 1, 1, 0, 0, 0)}

    metadata = core_metadata(first).decode()
    assert "Metadata-Version: 2.1\nName: Tiny.Pkg\nVersion: 1.0\n" in metadata
    assert "Requires-Python: >=3.8\n" in metadata
    assert "Requires-Dist: b>1\n" in metadata
    assert write_core_metadata(first).read_bytes() == core_metadata(first)


def test_sdist_is_a_valid_deterministic_archive(tmp_path: Path) -> None:
    first = build_sdist(tmp_path / "a", "Tiny.Pkg", "1.0", requires_python=">=3.8")
    second = build_sdist(tmp_path / "b", "Tiny.Pkg", "1.0", requires_python=">=3.8")
    assert first.name == "tiny_pkg-1.0.tar.gz"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(first) as archive:
        assert {member.mtime for member in archive.getmembers()} == {1_704_067_200}
        names = archive.getnames()
        assert "tiny_pkg-1.0/PKG-INFO" in names
        assert "tiny_pkg-1.0/tiny_pkg/__init__.py" in names
        pkg_info = archive.extractfile("tiny_pkg-1.0/PKG-INFO")
        assert pkg_info is not None
        assert b"Requires-Python: >=3.8\n" in pkg_info.read()

    setuptools_sdist = build_sdist(tmp_path / "c", "tiny", "1.0", backend="setuptools")
    with gzip.open(setuptools_sdist) as raw, tarfile.open(fileobj=raw) as archive:
        pyproject = archive.extractfile("tiny-1.0/pyproject.toml")
        assert pyproject is not None
        text = pyproject.read().decode()
    assert 'build-backend = "setuptools.build_meta"' in text
    assert '[project]\nname = "tiny"\nversion = "1.0"\n' in text


# -- pip against the upstream ------------------------------------------------------------


def test_pip_installs_from_json_pages(dists: Path, tmp_path: Path) -> None:
    # File URLs are relative ("../../files/..."): pip resolves them against the page.
    with serve_simple_index(dists, projects_meta=_offered(dists), links="relative") as index:
        installed = pip_install(index.url, "tiny", "plat", "only-yanked==1.0", target=tmp_path)
        # Newest release that is neither yanked, a pre-release nor for another Python;
        # the platform wheel is passed over for the pure one; a pin takes a yanked file.
        assert installed == {"tiny": "1.1", "plat": "1.0", "only-yanked": "1.0"}
        pages = [seen for seen in index.requests if seen.path.startswith("/simple/")]
        assert pages
        assert all(seen.accept and seen.accept.startswith(JSON_V1) for seen in pages)
        files = index.paths("/files/")
        assert "/files/plat-1.0-py3-none-any.whl" in files
        skipped = ("win_amd64", "tiny-1.2", "tiny-1.3", "tiny-2.0rc1")
        assert not any(name in path for path in files for name in skipped)
        # pip reads PEP 658 metadata before it downloads a wheel.
        assert "/files/tiny-1.1-py3-none-any.whl.metadata" in files


def test_pip_refuses_a_yanked_only_release_unless_pinned(dists: Path, tmp_path: Path) -> None:
    with serve_simple_index(dists, projects_meta=_offered(dists)) as index:
        with pytest.raises(PipError) as failure:
            pip_install(index.url, "only-yanked", target=tmp_path)
        assert "No matching distribution found for only-yanked" in failure.value.stderr


def test_pip_takes_a_prerelease_with_pre_and_legacy_metadata_key(
    dists: Path, tmp_path: Path
) -> None:
    with serve_simple_index(
        dists, projects_meta=_offered(dists), metadata_keys=("dist-info-metadata",)
    ) as index:
        fetched = pip_download(
            index.url,
            "tiny",
            dest=tmp_path,
            extra_args=["--pre", "--no-deps", "--only-binary", ":all:"],
        )
        assert fetched == ["tiny-2.0rc1-py3-none-any.whl"]
        assert (tmp_path / fetched[0]).read_bytes() == (dists / fetched[0]).read_bytes()
        # The pre-PEP 714 key alone still makes pip fetch the metadata file.
        assert "/files/tiny-2.0rc1-py3-none-any.whl.metadata" in index.paths()


def test_pip_installs_from_an_html_only_index_with_files_on_another_host(
    dists: Path, tmp_path: Path
) -> None:
    with (
        serve_files(dists) as host,
        serve_simple_index(
            dists, projects_meta=_offered(dists), html_only=True, files_base_url=host.url
        ) as index,
    ):
        installed = pip_install(index.url, "Tiny", "plat", target=tmp_path)
        assert installed == {"tiny": "1.1", "plat": "1.0"}
        # pip normalizes the name itself; it sends its JSON-first Accept, gets HTML anyway.
        assert index.paths("/simple/") == ["/simple/tiny/", "/simple/plat/"]
        assert all(seen.status == 200 for seen in index.requests)
        assert index.paths("/files/") == []
        assert "/packages/tiny-1.1-py3-none-any.whl" in host.paths()
        assert not any("tiny-1.3" in path or "win_amd64" in path for path in host.paths())


def test_pip_downloads_an_sdist_offline(dists: Path, tmp_path: Path) -> None:
    with serve_simple_index(dists, projects_meta=_offered(dists)) as index:
        fetched = pip_download(
            index.url,
            "tiny==1.1",
            dest=tmp_path,
            extra_args=["--no-binary", ":all:", "--no-deps"],
        )
    assert fetched == ["tiny-1.1.tar.gz"]
    assert (tmp_path / "tiny-1.1.tar.gz").read_bytes() == (dists / "tiny-1.1.tar.gz").read_bytes()


# -- the upstream server itself --------------------------------------------------------


def test_negotiation_follows_pep_691() -> None:
    pip_accept = f"{JSON_V1}, {HTML_V1}; q=0.1, text/html; q=0.01"
    assert negotiate(pip_accept) == JSON_V1
    assert negotiate(None) == "text/html"
    assert negotiate("*/*") == "text/html"
    assert negotiate(f"text/html, {JSON_V1}; q=0.5") == "text/html"
    assert negotiate(HTML_V1) == HTML_V1
    assert negotiate("application/json") is None
    assert negotiate(f"{JSON_V1}; q=0") is None
    assert format_upload_time(datetime(2024, 3, 1, 12, 0, 5, 7, tzinfo=timezone.utc)) == (
        "2024-03-01T12:00:05.000007Z"
    )


def test_upstream_redirects_caches_and_changes_between_runs(dists: Path) -> None:
    with serve_simple_index(dists, projects_meta=_offered(dists)) as index:
        status, headers, _ = _get(index.url + "Only_Yanked/", follow=False)
        assert (status, headers["Location"]) == (301, "/simple/only-yanked/")
        assert _get(index.url + "tiny", follow=False)[1]["Location"] == "/simple/tiny/"
        assert _get(index.url[:-1], follow=False)[1]["Location"] == "/simple/"
        assert _get(index.url + "missing/")[0] == 404
        assert _get(index.url + "tiny/", "application/json")[0] == 406

        status, headers, body = _get(index.project_url("tiny"), JSON_V1)
        assert (status, headers["Content-Type"]) == (200, JSON_V1)
        etag = headers["ETag"]
        again = _get(index.project_url("tiny"), JSON_V1, if_none_match=etag)
        assert (again[0], again[2]) == (304, b"")
        assert index.requests[-1].if_none_match == etag
        page = json.loads(body)
        by_name = {item["filename"]: item for item in page["files"]}
        assert by_name["tiny-1.0-py3-none-any.whl"]["upload-time"] == "2024-01-02T00:00:00Z"
        assert by_name["tiny-1.2-py3-none-any.whl"]["yanked"] == "broken build"

        # The served set and attributes are read per request.
        index.file("tiny-1.1-py3-none-any.whl").yanked = "withdrawn"
        index.remove("tiny-1.0-py3-none-any.whl")
        status, headers, body = _get(index.project_url("tiny"), JSON_V1, if_none_match=etag)
        assert status == 200 and headers["ETag"] != etag
        by_name = {item["filename"]: item for item in json.loads(body)["files"]}
        assert "tiny-1.0-py3-none-any.whl" not in by_name
        assert by_name["tiny-1.1-py3-none-any.whl"]["yanked"] == "withdrawn"
        index.rescan()
        assert "tiny-1.0-py3-none-any.whl" in _get(index.project_url("tiny"), JSON_V1)[2].decode()

        # Files and their metadata are what the page says.
        wheel = "plat-1.0-py3-none-any.whl"
        assert _get(index.file_url(wheel))[2] == (dists / wheel).read_bytes()
        assert _get(index.file_url(wheel) + ".metadata")[2] == core_metadata(dists / wheel)
        assert _get(index.base_url + "/files/tiny-1.1.tar.gz.metadata")[0] == 404
        index.html_only = True
        assert _get(index.project_url("tiny"), JSON_V1)[1]["Content-Type"].startswith("text/html")
        index.faults["/simple/tiny/"] = 503
        assert _get(index.project_url("tiny"))[0] == 503


# -- validators ------------------------------------------------------------------------


def test_validators_accept_the_upstream_pages(dists: Path) -> None:
    with serve_simple_index(dists, projects_meta=_offered(dists), links="absolute") as index:
        root_json = json.loads(_get(index.url, JSON_V1)[2])
        root_html = _get(index.url, "text/html")[2].decode()
        tiny_json = json.loads(_get(index.project_url("tiny"), JSON_V1)[2])
        tiny_html = _get(index.project_url("tiny"))[2].decode()

    assert check_json_root(root_json) == ["only-yanked", "plat", "tiny"]
    assert check_html_root(root_html) == ["only-yanked", "plat", "tiny"]
    files = check_json_project_page(tiny_json, dists, project="tiny")
    assert len(files) == 6
    anchors = check_html_project_page(tiny_html, dists, project="tiny")
    by_name = {anchor.text: anchor for anchor in anchors}
    assert by_name["tiny-1.3-py3-none-any.whl"].requires_python == ">=4"
    assert by_name["tiny-1.2-py3-none-any.whl"].yanked == "broken build"
    assert by_name["tiny-1.1-py3-none-any.whl"].yanked is None
    assert by_name["tiny-1.1-py3-none-any.whl"].core_metadata is not None
    assert by_name["tiny-1.1.tar.gz"].core_metadata is None


_GOOD_HTML = (
    "<!DOCTYPE html>\n<html><body>\n"
    '<a href="../../files/tiny-1.0.tar.gz#sha256={sha}" data-requires-python="&gt;=3.8" '
    'data-yanked="bad &amp; old">tiny-1.0.tar.gz</a><br />\n'
    "</body></html>\n"
)


def _html_cases(sha: str) -> dict[str, str]:
    good = _GOOD_HTML.replace("{sha}", sha)
    return {
        "wrong hash": good.replace(sha, "0" * 64),
        "short hash": good.replace(sha, sha[:40]),
        "no fragment": good.replace(f"#sha256={sha}", ""),
        "unescaped requires-python": good.replace("&gt;=3.8", ">=3.8"),
        "unescaped ampersand": good.replace("bad &amp; old", "bad & old"),
        "unquoted attribute": good.replace('data-yanked="bad &amp; old"', "data-yanked=bad"),
        "text is not the filename": good.replace(">tiny-1.0.tar.gz<", ">tiny<"),
        "href is another file": good.replace("files/tiny-1.0.tar.gz", "files/tiny-2.0.tar.gz"),
        "no doctype": good.replace("<!DOCTYPE html>\n", ""),
        "bad metadata": good.replace("<a ", '<a data-core-metadata="md5=abc" '),
        "bad specifier": good.replace("&gt;=3.8", "&gt;&gt;3"),
    }


def test_html_validators_reject_broken_pages(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path, "tiny", "1.0")
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    good = _GOOD_HTML.replace("{sha}", sha)
    [anchor] = check_html_project_page(good, tmp_path, project="tiny")
    assert (anchor.requires_python, anchor.yanked) == (">=3.8", "bad & old")
    for reason, page in _html_cases(sha).items():
        with pytest.raises(PageError):
            check_html_project_page(page, tmp_path)
            pytest.fail(f"accepted a page with: {reason}")
    with pytest.raises(PageError, match="not a file of"):
        check_html_project_page(good, project="other")

    root = '<!DOCTYPE html><html><body><a href="tiny-pkg/">Tiny_Pkg</a></body></html>'
    assert check_html_root(root) == ["tiny-pkg"]
    for broken in (
        root.replace('href="tiny-pkg/"', 'href="Tiny_Pkg/"'),
        root.replace('href="tiny-pkg/"', 'href="tiny-pkg"'),
        root.replace("</a>", '</a><a href="tiny-pkg/">tiny.pkg</a>'),
    ):
        with pytest.raises(PageError):
            check_html_root(broken)


def _json_page(sha: str, size: int) -> dict[str, Any]:
    return {
        "meta": {"api-version": "1.1"},
        "name": "tiny",
        "versions": ["1.0"],
        "files": [
            {
                "filename": "tiny-1.0.tar.gz",
                "url": "https://files.example/tiny-1.0.tar.gz",
                "hashes": {"sha256": sha},
                "requires-python": ">=3.8",
                "yanked": False,
                "size": size,
                "upload-time": "2024-01-01T00:00:00.123456Z",
                "core-metadata": False,
            }
        ],
    }


def test_json_validators_reject_broken_pages(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path, "tiny", "1.0")
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    size = sdist.stat().st_size
    assert len(check_json_project_page(_json_page(sha, size), tmp_path)) == 1

    def file_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda page: page["files"][0].__setitem__(key, value)

    breakages: dict[str, Callable[[dict[str, Any]], None]] = {
        "non-normalized name": lambda page: page.__setitem__("name", "Tiny"),
        "api version 2": lambda page: page["meta"].__setitem__("api-version", "2.0"),
        "no versions in 1.1": lambda page: page.pop("versions"),
        "wrong hash": file_field("hashes", {"sha256": "0" * 64}),
        "no sha256": file_field("hashes", {"md5": "0" * 32}),
        "empty yank reason": file_field("yanked", ""),
        "yanked as int": file_field("yanked", 1),
        "bad upload time": file_field("upload-time", "2024-01-01 00:00:00"),
        "wrong size": file_field("size", size + 1),
        "no size in 1.1": lambda page: page["files"][0].pop("size"),
        "url of another file": file_field("url", "https://files.example/tiny-2.0.tar.gz"),
        "metadata keys disagree": file_field("dist-info-metadata", True),
        "bad metadata hash": file_field("core-metadata", {"sha256": "xyz"}),
        "bad requires-python": file_field("requires-python", "3.8+"),
    }
    for reason, breaks in breakages.items():
        page = _json_page(sha, size)
        breaks(page)
        with pytest.raises(PageError):
            check_json_project_page(page, tmp_path)
            pytest.fail(f"accepted a page with: {reason}")

    root = {"meta": {"api-version": "1.0"}, "projects": [{"name": "Tiny_Pkg"}]}
    assert check_json_root(root) == ["tiny-pkg"]
    for broken in (
        {"projects": [{"name": "tiny"}]},
        {"meta": {"api-version": "1.0"}, "projects": [{"name": "a"}, {"name": "A"}]},
        {"meta": {"api-version": "1.0"}, "projects": [{}]},
    ):
        with pytest.raises(PageError):
            check_json_root(broken)
