"""Our own pages: PEP 503 HTML and PEP 691 JSON, deterministic."""

from __future__ import annotations

import datetime as dt
import html.parser
from pathlib import Path

import orjson

from reconciler.kinds.pypi.simple_index import (
    PublishedFile,
    published_entries,
    published_pages,
    render_pages,
)
from reconciler.store.local import LocalStore

SHA = "c" * 64


def _files() -> list[PublishedFile]:
    return [
        PublishedFile(
            project="demo",
            filename="demo-1.10-py3-none-any.whl",
            sha256=SHA,
            size=10,
            requires_python=">=3.8,<4",
            yanked='bad "quote" <b>',
            metadata_sha256="d" * 64,
            upload_time=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        ),
        PublishedFile(project="demo", filename="demo-1.9.tar.gz", sha256=SHA, size=20),
        PublishedFile(project="other-pkg", filename="other_pkg-1.0.tar.gz", sha256=SHA),
    ]


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def test_pages_list_every_file_with_escaped_attributes() -> None:
    pages = render_pages(_files())
    assert sorted(pages) == [
        "simple/demo/index.html",
        "simple/demo/index.json",
        "simple/index.html",
        "simple/index.json",
        "simple/other-pkg/index.html",
        "simple/other-pkg/index.json",
    ]
    parser = _Anchors()
    parser.feed(pages["simple/demo/index.html"].decode())
    first = parser.anchors[0]
    assert first["href"] == f"../../packages/demo/demo-1.10-py3-none-any.whl#sha256={SHA}"
    assert first["data-requires-python"] == ">=3.8,<4"
    assert first["data-yanked"] == 'bad "quote" <b>'
    assert first["data-core-metadata"] == "sha256=" + "d" * 64
    assert first["data-dist-info-metadata"] == "sha256=" + "d" * 64
    assert "data-yanked" not in parser.anchors[1]
    raw = pages["simple/demo/index.html"].decode()
    assert "&gt;=3.8,&lt;4" in raw and "&quot;quote&quot;" in raw

    data = orjson.loads(pages["simple/demo/index.json"])
    assert data["meta"] == {"api-version": "1.1"}
    assert data["versions"] == ["1.9", "1.10"]  # PEP 440 order, not string order
    entry = data["files"][0]
    assert entry["upload-time"] == "2024-01-02T03:04:05.000000Z"
    assert entry["core-metadata"] == {"sha256": "d" * 64}
    assert data["files"][1]["core-metadata"] is False
    # PEP 700 (1.1) needs every size; a page without them says 1.0 and has no versions.
    other = orjson.loads(pages["simple/other-pkg/index.json"])
    assert other["meta"] == {"api-version": "1.0"} and "versions" not in other
    root = orjson.loads(pages["simple/index.json"])
    assert root["projects"] == [{"name": "demo"}, {"name": "other-pkg"}]


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    assert render_pages(_files()) == render_pages(list(reversed(_files())))


def test_published_entries_round_trip(tmp_path: Path) -> None:
    for name, body in render_pages(_files()).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(body)
    (tmp_path / "simple" / "broken").mkdir()
    (tmp_path / "simple" / "broken" / "index.json").write_text("{torn")
    entries = published_entries(LocalStore(tmp_path))
    assert set(entries) == {
        ("demo", "demo-1.10-py3-none-any.whl"),
        ("demo", "demo-1.9.tar.gz"),
        ("other-pkg", "other_pkg-1.0.tar.gz"),
    }
    again = [PublishedFile.from_entry(p, e) for (p, _), e in entries.items()]
    assert render_pages(again) == render_pages(_files())
    assert "simple/broken/index.json" in published_pages(LocalStore(tmp_path))
