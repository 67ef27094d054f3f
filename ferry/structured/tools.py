"""OpenAI tool calling for chat models whose template knows nothing of tools.

How it works: the tools are described in a system prompt; the answer is constrained (see
constraint.py) to JSON of the shape parsed by tool_stream.py::

    {"content": "<text reply>"}                                     # auto only
    {"tool_calls": [{"name": "<tool>", "arguments": {<params>}}]}   # one or more calls

Invariants:
- ``validate_tools`` is the only place request tool fields are checked; the other functions
  assume validated input.
- Each call's ``arguments`` is constrained by that tool's ``parameters`` schema (absent: an empty
  object). Tool schemas are embedded under ``$defs`` with their own ``$ref``s rewritten, so
  ``#/$defs/...`` references inside a tool keep working.
- ``tool_choice``: ``none`` → no constraint (free text); ``auto`` → a text reply or calls;
  ``required`` → at least one call; named → calls to that tool only. ``parallel_tool_calls``
  false limits the answer to one call, otherwise at most ``MAX_PARALLEL_CALLS``.
- Assistant turns with ``tool_calls`` are rendered as exactly the JSON the model is asked to
  produce, so the conversation history shows the model its own format.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ferry.errors import InvalidRequest
from ferry.structured.schema_check import check_schema
from ferry.structured.tool_stream import ToolCall, ToolStreamParser, parse_tool_output

__all__ = [
    "ToolCall",
    "ToolStreamParser",
    "parse_tool_output",
    "prepare_messages",
    "tool_output_schema",
    "validate_tools",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_PARAMS: dict = {"type": "object", "properties": {}, "additionalProperties": False}
_SEP = (", ", ": ")  # the separators the grammar enforces
# Cap on calls in one parallel answer: small models otherwise repeat a call until the token cap.
MAX_PARALLEL_CALLS = 5


def _named_choice(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, dict):
        return tool_choice["function"]["name"]
    return None


def validate_tools(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> None:
    """Raise InvalidRequest for malformed ``tools`` / ``tool_choice`` / ``parallel_tool_calls``."""
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools must be an array", param="tools")
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        names.add(_validate_tool(tool, i, names))
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequest("parallel_tool_calls must be a boolean", param="parallel_tool_calls")
    if tool_choice is None or tool_choice == "none":
        return
    if tool_choice in ("auto", "required"):
        if not names:
            raise InvalidRequest(f"tool_choice '{tool_choice}' requires tools", param="tool_choice")
        return
    if isinstance(tool_choice, str):
        raise InvalidRequest(
            "tool_choice must be 'none', 'auto', 'required' or a function object",
            param="tool_choice",
        )
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type") != "function"
        or not isinstance(fn, dict)
        or not isinstance(fn.get("name"), str)
    ):
        raise InvalidRequest(
            'tool_choice object must be {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if fn["name"] not in names:
        raise InvalidRequest(
            f"tool_choice names function '{fn['name']}', which is not in tools",
            param="tool_choice",
        )


def _validate_tool(tool: Any, i: int, seen: set[str]) -> str:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest(f"{where} must be an object with type 'function'", param="tools")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest(f"{where}.function must be an object", param="tools")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            f"{where}.function.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
            param="tools",
        )
    if name in seen:
        raise InvalidRequest(f"{where}: duplicate function name '{name}'", param="tools")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise InvalidRequest(f"{where}.function.description must be a string", param="tools")
    if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
        raise InvalidRequest(f"{where}.function.strict must be a boolean", param="tools")
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise InvalidRequest(f"{where}.function.parameters must be an object", param="tools")
        check_schema(params, param="tools")
    return name


# -- the output schema -----------------------------------------------------------------------


def _rewrite_ref(ref: str, prefix: str) -> str:
    parts = ref[1:].lstrip("/").split("/", 2) if ref != "#" else []
    if len(parts) >= 2 and parts[0] in ("$defs", "definitions"):
        rest = "/" + parts[2] if len(parts) == 3 else ""
        return f"#/$defs/{prefix}__{parts[1]}{rest}"
    return f"#/$defs/{prefix}" + ("/" + "/".join(parts) if parts else "")


def _rewrite_refs(schema: Any, prefix: str) -> Any:
    """Copy ``schema`` with local ``$ref``s pointed at this tool's hoisted definitions."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = _rewrite_ref(ref, prefix)
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: _rewrite_refs(v, prefix) for k, v in schema[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(schema.get(key), list):
            out[key] = [_rewrite_refs(v, prefix) for v in schema[key]]
    for key in ("items", "additionalProperties"):
        if key in schema:
            out[key] = _rewrite_refs(schema[key], prefix)
    return out


def tool_output_schema(
    tools: list[dict] | None, tool_choice: Any, parallel_tool_calls: bool | None
) -> dict | None:
    """The JSON schema the answer is constrained to; None for free text."""
    if not tools or tool_choice == "none":
        return None
    named = _named_choice(tool_choice)
    defs: dict[str, Any] = {}
    calls = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if named is not None and fn["name"] != named:
            continue
        params = dict(fn.get("parameters") or _EMPTY_PARAMS)
        prefix = f"tool{i}"
        for key in ("$defs", "definitions"):
            for def_name, sub in (params.pop(key, None) or {}).items():
                defs[f"{prefix}__{def_name}"] = _rewrite_refs(sub, prefix)
        defs[prefix] = _rewrite_refs(params, prefix)
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": fn["name"]},
                    "arguments": {"$ref": f"#/$defs/{prefix}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    array: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    array["maxItems"] = 1 if parallel_tool_calls is False else MAX_PARALLEL_CALLS
    with_calls = {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if tool_choice in (None, "auto"):
        text = {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": False,
        }
        return {"$defs": defs, "anyOf": [with_calls, text]}
    return {"$defs": defs, **with_calls}


# -- prompt rendering ------------------------------------------------------------------------


def _system_prompt(tools: list[dict], tool_choice: Any, parallel: bool | None) -> str:
    lines = ["You can call these tools (functions). Each takes JSON arguments:"]
    for tool in tools:
        fn = tool["function"]
        params = json.dumps(fn.get("parameters") or _EMPTY_PARAMS, separators=_SEP)
        desc = f": {fn['description']}" if fn.get("description") else ""
        lines.append(f"- {fn['name']}{desc}\n  parameters: {params}")
    call = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    named = _named_choice(tool_choice)
    if named is not None:
        lines.append(f"Call the tool {named}. Answer only with JSON: {call}")
    elif tool_choice == "required":
        lines.append(f"Call one or more tools. Answer only with JSON: {call}")
    else:
        lines.append(
            f"To call tools, answer only with JSON: {call}\n"
            'To answer the user directly, answer only with JSON: {"content": "<your answer>"}'
        )
    if parallel is not False and named is None:
        lines.append("You may put several calls in the tool_calls list.")
    return "\n".join(lines)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest("only text content parts are supported", param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InvalidRequest("message content must be a string or an array", param="messages")


def _render_calls(tool_calls: list[dict]) -> str:
    calls = []
    for tc in tool_calls:
        fn = tc.get("function") or {}
        raw = fn.get("arguments", "{}")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = raw
        calls.append({"name": fn.get("name", ""), "arguments": args})
    return json.dumps({"tool_calls": calls}, separators=_SEP, ensure_ascii=False)


def prepare_messages(messages: list[dict], tools: list[dict] | None, tool_choice: Any,
                     parallel_tool_calls: bool | None = None) -> list[dict]:  # fmt: skip
    """Plain ``{role, content}`` messages (system/user/assistant) a simple template renders."""
    out: list[dict] = []
    call_names: dict[str, str] = {}
    for msg in messages:
        role = msg.get("role")
        if role == "developer":
            role = "system"
        if role == "assistant" and msg.get("tool_calls"):
            for tc in msg["tool_calls"]:
                call_names[tc.get("id", "")] = (tc.get("function") or {}).get("name", "")
            out.append({"role": "assistant", "content": _render_calls(msg["tool_calls"])})
        elif role == "tool":
            call_id = msg.get("tool_call_id", "")
            name = msg.get("name") or call_names.get(call_id, "unknown")
            line = f"Result of tool {name} (call {call_id}): {_text(msg.get('content'))}"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + line
            else:
                out.append({"role": "user", "content": line, "_tool_results": True})
        else:
            out.append({"role": role, "content": _text(msg.get("content"))})
    for m in out:
        m.pop("_tool_results", None)
    if tools and tool_choice != "none":
        prompt = _system_prompt(tools, tool_choice, parallel_tool_calls)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
