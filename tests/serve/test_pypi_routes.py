"""URLs of PyPI channels: negotiation and canonical redirects."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.kinds.pypi.pages import HTML_TYPE, JSON_TYPE
from reconciler.kinds.pypi.routes import NotServed, PackageFile, Page, Redirect, negotiate, route

PIP_ACCEPT = f"{JSON_TYPE}, {HTML_TYPE}; q=0.1, text/html; q=0.01"


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        (PIP_ACCEPT, "", JSON_TYPE),
        (None, "", "text/html"),
        ("*/*", "", HTML_TYPE),
        (f"text/html, {JSON_TYPE};q=0.5", "", "text/html"),
        (f"{HTML_TYPE};q=0.2, {JSON_TYPE};q=0.9", "", JSON_TYPE),
        ("application/xml", "", None),
        (f"{JSON_TYPE};q=0", "", None),
        (PIP_ACCEPT, f"format={HTML_TYPE}", HTML_TYPE),
        (PIP_ACCEPT, "format=bogus", None),
    ],
)
def test_negotiation(accept: str | None, query: str, expected: str | None) -> None:
    assert negotiate(accept, query) == expected


def test_routes(tmp_path: Path) -> None:
    assert route(tmp_path, [], None, "") == Redirect("simple/")
    assert route(tmp_path, ["simple"], None, "") == Redirect("simple/")
    assert route(tmp_path, ["simple", "Foo_Bar", ""], None, "") == Redirect("simple/foo-bar/")
    assert route(tmp_path, ["simple", "foo-bar"], None, "") == Redirect("simple/foo-bar/")
    page = route(tmp_path, ["simple", "foo-bar", ""], PIP_ACCEPT, "")
    assert page == Page(tmp_path / "simple" / "foo-bar" / "index.json", JSON_TYPE)
    root = route(tmp_path, ["simple", ""], None, "")
    assert root == Page(tmp_path / "simple" / "index.html", "text/html; charset=utf-8")
    assert route(tmp_path, ["simple", ""], "image/png", "") == NotServed(406)
    wheel = "foo_bar-1.0-py3-none-any.whl"
    assert route(tmp_path, ["packages", "foo-bar", wheel], None, "") == PackageFile(
        tmp_path / "packages" / "foo-bar" / wheel, "foo-bar", wheel
    )
    assert isinstance(
        route(tmp_path, ["packages", "foo-bar", wheel + ".metadata"], None, ""), PackageFile
    )
    for bad in (["packages", "Foo", wheel], ["packages", "foo-bar", "x.exe"], ["other"]):
        assert route(tmp_path, bad, None, "") == NotServed()
