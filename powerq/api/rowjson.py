"""A new power request's JSON straight from its row, without building pydantic models.

``POST /v1/nodes/{name}/power`` answers with :class:`~powerq.api.schemas.PowerAccepted`.
Building ``PowerRequestOut`` and ``PowerAccepted`` (validation of ~30 fields)
and dumping them through APIFlask's ``@output`` cost about a tenth of the
request's CPU; here each field has a converter made once from the model's own
JSON schema (date-time: UTC with ``Z``, uuid: its string, enum: its value,
number: a float), so the models stay the contract and the OpenAPI document,
and ``tests/api/test_row_json.py`` holds this output to the models' dump.
The row is trusted (it is what the database just returned): nothing is
validated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel

from powerq.api.serializers import PowerRequestOut

Converter = Callable[[Any], Any]


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _converter(schema: Mapping[str, Any]) -> Converter | None:
    """How a value (not None) of a property with this JSON schema is written
    (None: as it is).

    :raises ValueError: a kind of property this module does not know.
    """
    variants = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    if len(variants) != 1:
        raise ValueError(f"no converter for a property of schema {schema!r}")
    kind = variants[0]
    if "$ref" in kind:
        convert: Converter = _enum_value
    elif kind.get("format") == "date-time":
        convert = _utc
    elif kind.get("format") == "uuid":
        convert = str
    elif kind.get("type") == "number":
        convert = float
    elif kind.get("type") in ("integer", "boolean", "string") and "format" not in kind:
        return None
    else:
        raise ValueError(f"no converter for a property of schema {schema!r}")
    return convert


def converters(model: type[BaseModel]) -> dict[str, Converter | None]:
    """One converter per field of ``model``, from its JSON schema (None: as it is).

    :raises ValueError: a field of a kind this module does not know.
    """
    properties = model.model_json_schema()["properties"]
    return {name: _converter(properties[name]) for name in model.model_fields}


# Every field but the node's name (the row has the node's id).
_REQUEST_FIELDS = tuple(
    (name, convert) for name, convert in converters(PowerRequestOut).items() if name != "node"
)


def request_json(row: Mapping[str, Any], node: str) -> dict[str, Any]:
    """``PowerRequestOut`` of the request ``row`` (every column, as
    :func:`powerq.intents.record_new` returns it) on ``node``, dumped as JSON.

    :raises KeyError: the row lacks a column the model has.
    """
    out: dict[str, Any] = {"node": node}
    for name, convert in _REQUEST_FIELDS:
        value = row[name]
        out[name] = value if convert is None or value is None else convert(value)
    return out
