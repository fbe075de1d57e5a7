"""The JSON Schema of channels.yaml, generated from the models."""

from __future__ import annotations

import json
from typing import Any

from reconciler.config.models import Config

SCHEMA_ID = (
    "https://github.com/conda-reconcile/conda-reconcile/blob/main/schemas/channels.schema.json"
)


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def schema_text() -> str:
    """The schema as committed in ``schemas/channels.schema.json`` (stable bytes)."""
    return json.dumps(config_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
