"""Reading upstream project pages (PEP 691 JSON and PEP 503 HTML)."""

from __future__ import annotations

import datetime as dt
import re

import orjson
import pytest

from reconciler.kinds.pypi.pages import (
    PageError,
    parse_html_page,
    parse_json_page,
    parse_project_page,
)

SHA = "a" * 64
META = "b" * 64
PAGE = "https://index.example/simple/demo/"


def test_json_page_reads_every_field() -> None:
    body = orjson.dumps(
        {
            "meta": {"api-version": "1.1"},
            "name": "demo",
            "files": [
                {
                    "filename": "demo-1.0-py3-none-any.whl",
                    "url": "../../files/demo-1.0-py3-none-any.whl",
                    "hashes": {"sha256": SHA.upper()},
                    "requires-python": ">=3.8",
                    "yanked": "broken build",
                    "core-metadata": {"sha256": META},
                    "size": 123,
                    "upload-time": "2024-05-01T10:00:00.000000Z",
                },
                {
                    "filename": "demo-0.9.tar.gz",
                    "url": "https://files.example/demo-0.9.tar.gz",
                    "hashes": {"sha256": SHA},
                    "yanked": True,
                    "dist-info-metadata": {"sha256": META},
                },
            ],
        }
    )
    page = parse_json_page(body, PAGE, "demo")
    wheel, sdist = page.files
    assert wheel.url == "https://index.example/files/demo-1.0-py3-none-any.whl"
    assert wheel.sha256 == SHA
    assert wheel.requires_python == ">=3.8"
    assert wheel.yanked == "broken build"
    assert wheel.metadata_sha256 == META
    assert wheel.size == 123
    assert wheel.upload_time == dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)
    assert sdist.yanked is True
    assert sdist.metadata_sha256 == META  # the PEP 658 name is read too
    assert page.problems == []


def test_html_page_reads_anchors_and_unescapes() -> None:
    html = f"""<!DOCTYPE html><html><body>
    <a href="/files/demo-1.0.tar.gz#sha256={SHA}" data-requires-python="&gt;=3.8,&lt;4"
       data-yanked="" data-core-metadata="sha256={META}">demo-1.0.tar.gz</a>
    <a href="demo-2.0-py3-none-any.whl#sha256={SHA}">demo-2.0-py3-none-any.whl</a>
    </body></html>"""
    page = parse_html_page(html, PAGE, "demo")
    sdist, wheel = page.files
    assert sdist.url == "https://index.example/files/demo-1.0.tar.gz"
    assert sdist.requires_python == ">=3.8,<4"
    assert sdist.yanked is True  # data-yanked present without a reason
    assert sdist.metadata_sha256 == META
    assert wheel.url == PAGE + "demo-2.0-py3-none-any.whl"
    assert wheel.yanked is False and wheel.metadata_sha256 is None


@pytest.mark.parametrize(
    ("href", "problem"),
    [
        ("../../etc/passwd#sha256=" + SHA, "unsafe or unknown file name"),
        ("demo-1.0.tar.gz", "no sha256"),
        ("demo-1.0.tar.gz#md5=abc", "no sha256"),
        ("demo-1.0.tar.gz#sha256=xyz", "no sha256"),
        ("..%2f..%2fx.whl#sha256=" + SHA, "unsafe"),
    ],
)
def test_untrusted_entries_are_left_out_with_a_reason(href: str, problem: str) -> None:
    page = parse_html_page(f'<a href="{href}">x</a>', PAGE, "demo")
    assert page.files == []
    assert len(page.problems) == 1 and problem in page.problems[0]


def test_unreadable_pages_name_the_url() -> None:
    with pytest.raises(PageError, match=re.escape(PAGE)):
        parse_json_page(b"{not json", PAGE, "demo")
    with pytest.raises(PageError, match="no 'files' list"):
        parse_json_page(b'{"meta": {}}', PAGE, "demo")
    with pytest.raises(PageError, match=r"unsupported simple API version 2\.0"):
        parse_json_page(b'{"meta": {"api-version": "2.0"}, "files": []}', PAGE, "demo")
    with pytest.raises(PageError, match="not UTF-8"):
        parse_project_page(b"\xff\xfe<a>", "text/html", PAGE, "demo")


def test_content_is_sniffed_when_the_type_is_vague() -> None:
    body = orjson.dumps({"meta": {"api-version": "1.0"}, "files": []})
    assert parse_project_page(body, "text/plain", PAGE, "demo").files == []
    html = f'<a href="demo-1.0.tar.gz#sha256={SHA}">demo-1.0.tar.gz</a>'.encode()
    assert len(parse_project_page(html, "", PAGE, "demo").files) == 1
