from __future__ import annotations

import datetime as dt

import pytest

from reconciler.config.yaml_source import YamlSyntaxError, load_yaml


def test_records_key_and_item_lines() -> None:
    doc = load_yaml("a: 1\nb:\n  - x: 2\n  - y\n")
    assert doc.data == {"a": 1, "b": [{"x": 2}, "y"]}
    assert doc.lines[("a",)] == 1
    assert doc.lines[("b", 0, "x")] == 3
    assert doc.lines[("b", 1)] == 4


def test_duplicate_keys_are_reported_not_overwritten() -> None:
    doc = load_yaml("a: 1\nb: 2\na: 3\n")
    assert doc.data == {"a": 1, "b": 2}
    assert doc.duplicates == [(("a",), 3, 1)]


def test_nested_duplicates_are_found() -> None:
    doc = load_yaml("top:\n  - k: 1\n    k: 2\n")
    assert doc.duplicates == [(("top", 0, "k"), 3, 2)]


def test_merge_keys_and_anchors() -> None:
    doc = load_yaml("base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n")
    assert doc.data["child"] == {"x": 1, "y": 2}


def test_dates_become_dates() -> None:
    assert load_yaml("d: 2023-01-01\n").data == {"d": dt.date(2023, 1, 1)}


def test_line_of_falls_back_to_ancestor() -> None:
    doc = load_yaml("a:\n  b: 1\n")
    assert doc.line_of(("a", "missing")) == 1
    assert doc.line_of(("a", "b")) == 2


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: [1, 2\nb: 3\n", 2), ("a: 1\n  b: 2\n", 2), ("a: 1\n---\nb: 2\n", 2)],
)
def test_syntax_errors_carry_a_line(text: str, line: int) -> None:
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml(text)
    assert info.value.line == line
    assert "invalid YAML" in info.value.message


def test_empty_document() -> None:
    assert load_yaml("").data is None


def test_control_characters_are_a_syntax_error_with_a_line() -> None:
    from reconciler.config.yaml_source import YamlSyntaxError, load_yaml

    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("version: 1\nchannels: []\n\x1f\n")
    assert info.value.line == 3
    assert "control character U+001F is not allowed" in str(info.value)
