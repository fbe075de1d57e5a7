"""PyPI project pages from an upstream: any bytes give a page of safe entries or an error
naming the page, never an internal error."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.kinds.pypi.names import is_safe_filename
from reconciler.kinds.pypi.pages import PageError, parse_html_page, parse_json_page
from tests.fuzz.common import budget

URL = "https://i.example/simple/x/"


@budget(200)
@given(body=st.binary(max_size=300))
def test_json_pages(body: bytes) -> None:
    try:
        page = parse_json_page(body, URL, "x")
    except PageError as exc:
        assert URL in exc.message
    else:
        assert all(is_safe_filename(f.filename) for f in page.files)


@budget(200)
@given(text=st.text(max_size=300))
def test_html_pages(text: str) -> None:
    page = parse_html_page(text, URL, "x")
    assert all(is_safe_filename(f.filename) and len(f.sha256) == 64 for f in page.files)


@budget(100)
@given(
    name=st.text(max_size=20),
    digest=st.text(alphabet="0123456789abcdef", min_size=60, max_size=66),
)
def test_html_links(name: str, digest: str) -> None:
    html = f'<a href="../../files/{name}#sha256={digest}">{name}</a>'
    page = parse_html_page(html, URL, "x")
    for item in page.files:
        assert is_safe_filename(item.filename) and len(item.sha256) == 64
