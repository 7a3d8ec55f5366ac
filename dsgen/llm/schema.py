"""How to ask an endpoint for JSON that follows a pydantic model (`response_format`)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel


def response_format(structured_output: str, name: str, model: type[BaseModel]) -> dict[str, Any] | None:
    """json_schema (strict), json_object, or None ('none': the prompt alone asks for JSON)."""
    if structured_output == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": _schema(model), "strict": True}}
    if structured_output == "json_object":
        return {"type": "json_object"}
    return None


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()  # costs about 0.5 ms: once per model, not per call
