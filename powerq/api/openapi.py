"""Finishing touches on the OpenAPI 3.1 document APIFlask generates from the views.

APIFlask derives paths, parameters, bodies and success responses from the
decorators; this processor makes the document say what the API really does:

* every error response is ``application/problem+json`` (:class:`Problem`), and
  each operation lists the errors it can return: 401 (authenticated), 403
  (needs more than reader), 404 (path parameters), 400/413/415/422 (JSON body),
  422 (query string), 503 (database down), plus what the view documents;
* pydantic's nested schemas (``NodePage.NodeOut``) get their plain names;
* request bodies are required; bodies a view parses itself (the import
  manifest) are described via :func:`document_request_body`;
* headers: ``Location`` on 201/202, ``Idempotency-Key`` on power requests;
* a node's ``driver`` in request bodies lists only the enabled drivers
  (``POWERQ_DRIVERS``), read when the document is generated.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIFlask

from powerq.api.problems import PROBLEM_MIME
from powerq.api.schemas import NODE_NAME_DOC_PATTERN, Problem
from powerq.inventory import enabled_drivers

_BODIES: dict[tuple[str, str], dict[str, Any]] = {}
_HEADERS: dict[tuple[str, str], list[dict[str, Any]]] = {}
_SCHEMAS = "#/components/schemas/"
_ERROR_TEXT = {
    400: "Malformed request (e.g. invalid JSON)",
    401: "No valid bearer token",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflict",
    413: "Request body too large",
    415: "The body's Content-Type is not JSON (application/json, UTF-8)",
    422: "Invalid input",
    503: "A backing service is unavailable; retry later",
}
_METHODS = ("get", "post", "put", "patch", "delete")
# Request bodies whose ``driver`` must be an enabled driver.
_DRIVER_INPUTS = ("NodeIn", "NodePatch")
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": NODE_NAME_DOC_PATTERN, "example": "node-1"},
    "request_id": {"type": "string", "format": "uuid"},
    "token_id": {"type": "integer", "minimum": 0},
}


def document_request_body(path: str, method: str, body: dict[str, Any]) -> None:
    """Describe the request body of a view that parses its body itself."""
    _BODIES[(path, method)] = body


def document_header(path: str, method: str, parameter: dict[str, Any]) -> None:
    """Describe a request header a view reads itself."""
    _HEADERS.setdefault((path, method), []).append(parameter)


def process_spec(spec: dict[Any, Any] | str) -> dict[Any, Any] | str:
    """APIFlask's ``spec_processor``: see the module docstring."""
    if not isinstance(spec, dict):  # YAML specs are not used
        return spec
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    _add_problem_schema(schemas)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method in _METHODS:
                _finish_operation(path, method, operation)
    for name in ("HTTPError", "ValidationError"):
        schemas.pop(name, None)
    _plain_schema_names(spec)
    _enabled_drivers_only(spec["components"]["schemas"])
    return spec


def _enabled_drivers_only(schemas: dict[str, Any]) -> None:
    """Node bodies accept the enabled drivers, not every driver powerq knows."""
    enabled = [kind.value for kind in enabled_drivers()]
    for name in _DRIVER_INPUTS:
        properties = schemas.get(name, {}).get("properties", {})
        if "driver" in properties:
            properties["driver"] = {
                "type": "string",
                "enum": enabled,
                "description": "A BMC driver enabled on this installation (POWERQ_DRIVERS)",
            }


def _add_problem_schema(schemas: dict[str, Any]) -> None:
    document = Problem.model_json_schema(ref_template=_SCHEMAS + "{model}")
    for name, definition in document.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["Problem"] = document


def _finish_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    if (path, method) in _BODIES:
        operation["requestBody"] = _BODIES[(path, method)]
    if "requestBody" in operation:
        operation["requestBody"].setdefault("required", True)
    operation["parameters"] = [_clean_parameter(p) for p in operation.get("parameters", [])]
    operation["parameters"] += _HEADERS.get((path, method), [])
    responses = operation.setdefault("responses", {})
    for status in _error_statuses(operation):
        responses.setdefault(str(status), {"description": _ERROR_TEXT.get(status, "Error")})
    for status, response in responses.items():
        if status[0] in "45":
            response["content"] = {PROBLEM_MIME: {"schema": {"$ref": _SCHEMAS + "Problem"}}}
        elif status in ("201", "202"):
            response.setdefault("headers", {})["Location"] = {
                "description": "Where the created resource is",
                "schema": {"type": "string"},
            }


def _error_statuses(operation: dict[str, Any]) -> list[int]:
    statuses = [503]
    roles = {
        role
        for requirement in operation.get("security", [])
        for scopes in requirement.values()
        for role in scopes
    }
    if operation.get("security"):
        statuses.append(401)
    if roles - {"reader"}:
        statuses.append(403)
    where = {parameter["in"] for parameter in operation["parameters"]}
    if "path" in where:
        statuses.append(404)
    if "requestBody" in operation:
        statuses += [400, 413, 415, 422]
    if where & {"query", "header"}:
        statuses.append(422)
    return sorted(set(statuses))


def _clean_parameter(parameter: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` and the ``default: null`` of optional query fields;
    give path parameters their real format."""
    if parameter.get("in") == "path" and parameter["name"] in _PATH_PARAMETERS:
        return {**parameter, "schema": _PATH_PARAMETERS[parameter["name"]]}
    schema = dict(parameter.get("schema", {}))
    schema.pop("title", None)
    if schema.get("default", 0) is None:
        del schema["default"]
    return {**parameter, "schema": schema}


def _plain_schema_names(spec: dict[str, Any]) -> None:
    """Rename ``Parent.Child`` components to ``Child`` where that is unambiguous."""
    schemas = spec["components"]["schemas"]
    plain = {name: name.rsplit(".", 1)[1] for name in schemas if "." in name}
    normalised = {name: _rewritten(schema, plain) for name, schema in schemas.items()}
    renames: dict[str, str] = {}
    for name, target in plain.items():
        if target not in schemas or normalised[target] == normalised[name]:
            renames[name] = target
    for name, target in renames.items():
        normalised.setdefault(target, normalised[name])
        del normalised[name]
    spec["components"]["schemas"] = normalised
    spec["paths"] = _rewritten(spec["paths"], renames)


def _rewritten(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMAS):
            target = ref[len(_SCHEMAS) :]
            node = {**node, "$ref": _SCHEMAS + renames.get(target, target)}
        return {key: _rewritten(value, renames) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewritten(item, renames) for item in node]
    return node


def init_app(app: APIFlask) -> None:
    """Install the processor on ``app``."""
    app.spec_processor(process_spec)
