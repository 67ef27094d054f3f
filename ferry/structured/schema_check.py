"""Which JSON Schema keywords structured outputs enforce; everything else is refused by name.

Invariant: ``check_schema`` raises ``Unsupported`` for any keyword not in ``ENFORCED`` or
``ANNOTATIONS`` anywhere in the schema, so a request is either fully enforced or refused
(never silently unenforced). It is pure (no model needed) so tool schemas can be checked
while validating a request.
"""

from __future__ import annotations

from typing import Any

from ferry.errors import InvalidRequest, Unsupported

# Keywords the backend (llguidance) enforces and our tests exercise.
ENFORCED = frozenset(
    {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
        "properties", "required", "additionalProperties", "minProperties", "maxProperties",
        "items", "prefixItems", "minItems", "maxItems",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern", "format",
    }
)  # fmt: skip
# Keywords that do not constrain values.
ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "$anchor",
    }
)  # fmt: skip
_SCHEMA_MAP_KEYS = ("properties", "$defs", "definitions")
_SCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_KEYS = ("additionalProperties", "items")


def check_schema(schema: Any, *, param: str) -> None:
    """Raise Unsupported naming the first unenforceable keyword, InvalidRequest if malformed."""
    _walk(schema, "#", param)


def _walk(schema: Any, path: str, param: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(f"JSON schema at {path} must be an object or boolean", param=param)
    for key in schema:
        if not isinstance(key, str):
            raise InvalidRequest(f"JSON schema at {path} has a non-string key", param=param)
        if key in ENFORCED or key in ANNOTATIONS or key.startswith("x-"):
            continue
        raise Unsupported(
            f"JSON schema keyword '{key}' (at {path}) is not supported for structured outputs",
            param=param,
        )
    for key in _SCHEMA_MAP_KEYS:
        if key in schema:
            sub = schema[key]
            if not isinstance(sub, dict):
                raise InvalidRequest(f"'{key}' at {path} must be an object", param=param)
            for name, child in sub.items():
                _walk(child, f"{path}/{key}/{name}", param)
    for key in _SCHEMA_LIST_KEYS:
        if key in schema:
            sub = schema[key]
            if not isinstance(sub, list) or not sub:
                raise InvalidRequest(f"'{key}' at {path} must be a non-empty array", param=param)
            for i, child in enumerate(sub):
                _walk(child, f"{path}/{key}/{i}", param)
    for key in _SCHEMA_KEYS:
        if key in schema:
            _walk(schema[key], f"{path}/{key}", param)
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise InvalidRequest(f"'required' at {path} must be an array of strings", param=param)
