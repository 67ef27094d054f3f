"""Structured outputs and tool calling through the server and the official client (strict)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                   "required": ["tz"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer",
     "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"type": "string",
     "enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3}}, "required": ["colors"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}},
     "required": ["ok", "note"], "additionalProperties": False},
    {"type": "object", "properties": {"kind": {"const": "point"}, "p": {"$ref": "#/$defs/pt"}},
     "required": ["kind", "p"], "additionalProperties": False,
     "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"},
                                                       "y": {"type": "number"}},
                      "required": ["x", "y"], "additionalProperties": False}}},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
     "required": ["v"], "additionalProperties": False},
]


def test_json_schema_outputs_validate_through_the_server(client):
    finished = 0
    for schema in SCHEMAS:
        for seed in range(5):
            r = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "Give me an example."}],
                temperature=0.8, seed=seed, max_tokens=120,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "x", "schema": schema, "strict": True}})
            ch = r.choices[0]
            if ch.finish_reason == "length":
                continue
            assert ch.finish_reason == "stop"
            jsonschema.validate(json.loads(ch.message.content), schema)
            finished += 1
    assert finished >= 0.8 * len(SCHEMAS) * 5


def test_json_object_is_one_json_object(client):
    r = client.chat.completions.create(model="default", messages=ASK, max_tokens=80, seed=1,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


class City(BaseModel):
    name: str
    country: str
    population: int  # unbounded: Ferry holds integers to the JSON-safe range


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model="default", response_format=City, max_tokens=200,
                                      temperature=0,
                                      messages=[{"role": "user", "content": "Describe Paris."}])
    assert isinstance(r.choices[0].message.parsed, City)


def calls_of(r):
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    for c in msg.tool_calls:
        assert c.id.startswith("call_") and c.type == "function"
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
    return msg.tool_calls


def test_tool_choice_required_always_calls(client):
    r = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER, TIME],
                                       tool_choice="required", max_tokens=150, temperature=0)
    assert len(calls_of(r)) >= 1


def test_named_tool_choice_calls_that_tool(client):
    r = client.chat.completions.create(
        model="default", messages=ASK, tools=[WEATHER, TIME], max_tokens=150, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert {c.function.name for c in calls_of(r)} == {"get_time"}


def test_tool_choice_none_answers_in_text(client):
    r = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER],
                                       tool_choice="none", max_tokens=30)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_auto_gives_either_calls_or_text(client):
    r = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER, TIME],
                                       tool_choice="auto", max_tokens=150, seed=3)
    m = r.choices[0].message
    assert (m.tool_calls and r.choices[0].finish_reason == "tool_calls") or m.content


def test_parallel_calls(client):
    r = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER, TIME],
                                       tool_choice="required", parallel_tool_calls=True,
                                       max_tokens=200, seed=5)
    assert len(calls_of(r)) >= 1
    r1 = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER, TIME],
                                        tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=200, seed=5)
    assert len(calls_of(r1)) == 1


def test_streamed_tool_call_deltas_assemble_into_valid_arguments(client):
    # greedy: unseeded temperature-1 draws ramble inside a string past max_tokens ~1 time in 6
    stream = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER],
                                            tool_choice="required", max_tokens=150, stream=True,
                                            temperature=0)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            c = calls.setdefault(tc.index, {"name": "", "args": "", "id": None})
            if tc.id:
                c["id"] = tc.id
                c["name"] = tc.function.name
            c["args"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls
    for c in calls.values():
        assert c["id"].startswith("call_") and c["name"] == "get_weather"
        jsonschema.validate(json.loads(c["args"]), PARAMS["get_weather"])


def test_multi_turn_with_tool_results_in_the_history(client):
    first = client.chat.completions.create(model="default", messages=ASK, tools=[WEATHER],
                                           tool_choice="required", max_tokens=250, seed=2,
                                           temperature=0.5)
    call = calls_of(first)[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}]
    r = client.chat.completions.create(model="default", messages=history, tools=[WEATHER],
                                       tool_choice="none", max_tokens=40)
    assert r.choices[0].message.content


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "a(?=b)"}}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_structured_mistakes_are_400(http, body, param):
    r = http.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
