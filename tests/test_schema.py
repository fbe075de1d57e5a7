from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.config.schema import config_schema, schema_text
from tests.conftest import REPO_ROOT


def _json_view(value: Any) -> Any:
    """What an editor's JSON Schema validator sees: YAML dates are strings."""
    if isinstance(value, dict):
        return {k: _json_view(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_view(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def _example() -> Any:
    text = (REPO_ROOT / "examples" / "channels.yaml").read_text(encoding="utf-8")
    return _json_view(yaml.safe_load(text))


def test_committed_schema_is_current() -> None:
    committed = (REPO_ROOT / "schemas" / "channels.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text()


def test_schema_is_valid_and_accepts_the_example() -> None:
    schema = config_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema, format_checker=jsonschema.FormatChecker())
    errors = list(validator.iter_errors(_example()))
    assert errors == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["channels"][0]["mirrors"][0].update(mode="activ"), "activ"),
        (lambda d: d["channels"][0].update(subdirs=["Linux_64"]), "Linux_64"),
        (lambda d: d["channels"][0]["filters"]["exclude"][0].update(nope=1), "nope"),
    ],
)
def test_schema_rejects_mistakes(mutate: Any, needle: str) -> None:
    data = _example()
    mutate(data)
    errors = list(jsonschema.Draft202012Validator(config_schema()).iter_errors(data))
    assert errors, "schema accepted an invalid document"
    assert any(needle in json.dumps(e.instance) or needle in e.message for e in errors)


def test_example_declares_schema_for_editors() -> None:
    first = (REPO_ROOT / "examples" / "channels.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/channels.schema.json"
