"""index.html pages escape untrusted metadata and do not change by themselves."""

from __future__ import annotations

from reconciler.conda.index_html import render_channel_html, render_subdir_html


def test_subdir_page_lists_and_escapes() -> None:
    hostile = "a<script>alert(1)</script>-1-0.conda"
    repodata = {
        "packages": {},
        "packages.conda": {
            hostile: {"size": 2048, "timestamp": 1_700_000_000_000, "sha256": "ab" * 32}
        },
    }
    page = render_subdir_html("chan", "linux-64", repodata, {"repodata.json": (10, 0)})
    assert "<script>" not in page
    assert "a&lt;script&gt;alert(1)&lt;/script&gt;-1-0.conda" in page
    assert "2.0 KiB" in page and "2023-11-14 22:13 UTC" in page
    assert 'href="repodata.json"' in page
    assert page == render_subdir_html("chan", "linux-64", repodata, {"repodata.json": (10, 0)})


def test_channel_page_links_subdirs_and_packages() -> None:
    channeldata = {
        "packages": {
            "good": {"version": "1.0", "home": "https://example.org", "summary": "fine"},
            "bad": {"version": "2", "home": "javascript:alert(1)", "summary": "<b>x</b>"},
        }
    }
    page = render_channel_html("chan", channeldata, ["noarch", "linux-64"])
    assert 'href="linux-64/index.html"' in page and 'href="noarch/index.html"' in page
    assert 'href="https://example.org"' in page
    assert "javascript:" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
