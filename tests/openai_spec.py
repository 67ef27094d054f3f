"""Validate objects against the official OpenAI OpenAPI document (tests/fixtures/openai/, with
its source and licence).

The document is OpenAPI 3.1 but still uses 3.0-style ``nullable: true``; those schemas are
rewritten to ``anyOf: [schema, {type: null}]`` before validation with jsonschema (2020-12).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "fixtures" / "openai" / "openapi.yaml"
CACHE = Path("/tmp/ferry-openai-spec.pickle")


def _fix_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _fix_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_fix_nullable(v) for v in node]
    return node


@functools.cache
def _document() -> dict:
    if CACHE.exists() and CACHE.stat().st_mtime > SPEC.stat().st_mtime:
        return pickle.loads(CACHE.read_bytes())
    doc = _fix_nullable(yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                    yaml.SafeLoader)))
    CACHE.write_bytes(pickle.dumps(doc))
    return doc


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource("urn:openai", Resource(_document(), DRAFT202012))


def validate(obj: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless ``obj`` matches components/schemas/<name>."""
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=_registry()).validate(obj)
