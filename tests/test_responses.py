"""The Responses API through the official openai client (strict validation) against a real
server; every response, item list and stream event is also validated against the OpenAI spec."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest
from openai_spec import validate
from responses_helpers import MODEL, check_stream, output_text, stream

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
LONG = {"ignore_eos": True}  # Ferry extension, as on chat: always generate max_output_tokens


def raw_create(client, **kw) -> dict:
    raw = client.responses.with_raw_response.create(model=MODEL, **kw)
    parsed = raw.parse()  # the client's own strict validation
    body = json.loads(raw.content)
    validate(body, "Response")
    assert parsed.id == body["id"]
    return body


def test_plain_create_answers_a_valid_completed_response(client):
    r = raw_create(client, input="Say hello in one word.", max_output_tokens=64, temperature=0)
    assert r["object"] == "response" and r["status"] == "completed" and r["store"] is True
    assert r["id"].startswith("resp_") and r["completed_at"] >= r["created_at"]
    [msg] = r["output"]
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["status"] == "completed"
    assert msg["content"][0]["type"] == "output_text" and msg["content"][0]["annotations"] == []
    u = r["usage"]
    assert u["input_tokens"] > 0 and 0 < u["output_tokens"] < 64
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert u["input_tokens_details"]["cached_tokens"] >= 0
    assert client.responses.retrieve(r["id"]).output_text == output_text(r)


def test_budget_exhausted_is_incomplete_with_its_reason(client):
    r = raw_create(client, input="Count to one hundred.", max_output_tokens=16,
                   extra_body=LONG)
    assert r["status"] == "incomplete" and r["completed_at"] is None
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert r["output"][0]["status"] == "incomplete" and r["usage"]["output_tokens"] == 16


def test_streamed_events_are_valid_numbered_and_match_the_stored_response(server, client):
    events = stream(server.url, {"input": "Say hello in one word.", "max_output_tokens": 64,
                                 "temperature": 0})
    final = check_stream(events)
    types = [e["type"] for e in events]
    for t in ("response.output_item.added", "response.content_part.added",
              "response.output_text.delta", "response.output_text.done",
              "response.content_part.done", "response.output_item.done"):
        assert t in types
    assert httpx.get(f"{server.url}/v1/responses/{final['id']}").json() == final
    # the client's stream helper assembles the same text
    assert events[-1]["type"] == "response.completed"
    with client.responses.stream(model=MODEL, input="Say hello in one word.",
                                 max_output_tokens=64, temperature=0) as s:
        got = s.get_final_response()
    assert got.output_text == output_text(final)


def test_streamed_incomplete_ends_with_response_incomplete(server):
    events = stream(server.url, {"input": "Go on.", "max_output_tokens": 16, **LONG})
    final = check_stream(events)
    assert events[-1]["type"] == "response.incomplete" and final["status"] == "incomplete"


def test_json_schema_output_follows_the_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = raw_create(client, input="Invent a person.", max_output_tokens=60, temperature=0,
                   text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                                    "strict": True}})
    assert r["text"]["format"]["type"] == "json_schema" and r["text"]["format"]["name"] == "person"
    jsonschema.validate(json.loads(output_text(r)), schema)
    r = raw_create(client, input="Answer in JSON.", max_output_tokens=40, temperature=0,
                   text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(output_text(r)), dict)


def test_function_call_round_trip_with_function_call_output(client):
    r = raw_create(client, input="What is the weather in Paris?", tools=[WEATHER],
                   tool_choice="required", max_output_tokens=60, temperature=0)
    calls = [it for it in r["output"] if it["type"] == "function_call"]
    assert calls and calls[0]["name"] == "get_weather" and calls[0]["status"] == "completed"
    assert "city" in json.loads(calls[0]["arguments"])
    assert r["tools"][0]["name"] == "get_weather" and r["tools"][0]["strict"] is True
    # continue statefully: only the tool's output is sent
    out = [{"type": "function_call_output", "call_id": c["call_id"], "output": "sunny, 21 C"}
           for c in calls]
    r2 = raw_create(client, previous_response_id=r["id"], input=out, tools=[WEATHER],
                    max_output_tokens=40, temperature=0)
    assert r2["status"] in ("completed", "incomplete") and r2["output"]
    items = client.responses.input_items.list(r2["id"], order="asc").data
    k = len(calls)
    assert [it.type for it in items] == ["message"] + ["function_call"] * k + \
        ["function_call_output"] * k
    # ... and statelessly: the whole conversation as items
    r3 = raw_create(client, input=[{"role": "user", "content": "What is the weather in Paris?"},
                                   *[{k: c[k] for k in ("type", "call_id", "name", "arguments")}
                                     for c in calls], *out],
                    tools=[WEATHER], max_output_tokens=40, temperature=0, store=False)
    assert r3["usage"]["input_tokens"] == r2["usage"]["input_tokens"]


def test_streamed_function_call_sends_argument_deltas(server):
    events = stream(server.url, {"input": "Weather in Rome?", "tools": [WEATHER],
                                 "tool_choice": {"type": "function", "name": "get_weather"},
                                 "parallel_tool_calls": False, "max_output_tokens": 60,
                                 "temperature": 0})
    final = check_stream(events)
    [call] = [it for it in final["output"] if it["type"] == "function_call"]
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.function_call_arguments.delta")
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert deltas == done["arguments"] == call["arguments"] and done["name"] == "get_weather"
    json.loads(call["arguments"])


def test_previous_response_id_carries_three_turns(client):
    r1 = raw_create(client, input="My name is Ada.", instructions="Be brief.",
                    max_output_tokens=20, temperature=0)
    r2 = raw_create(client, previous_response_id=r1["id"], input="I live in Oslo.",
                    max_output_tokens=20, temperature=0)
    r3 = raw_create(client, previous_response_id=r2["id"], input="What is my name?",
                    max_output_tokens=20, temperature=0)
    assert r3["previous_response_id"] == r2["id"] and r1["instructions"] == "Be brief."
    assert r2["instructions"] is None  # instructions are not carried over
    # each turn's prompt holds the previous one's: input grows, the prefix is cached
    assert r1["usage"]["input_tokens"] < r2["usage"]["input_tokens"] < r3["usage"]["input_tokens"]
    assert r3["usage"]["input_tokens_details"]["cached_tokens"] > 0
    items = client.responses.input_items.list(r3["id"], order="asc", limit=100).data
    texts = [it.content[0].text for it in items]
    assert texts[0] == "My name is Ada." and texts[2] == "I live in Oslo."
    assert texts[4] == "What is my name?" and len(items) == 5
    assert [it.role for it in items] == ["user", "assistant", "user", "assistant", "user"]
    assert texts[1] == output_text(r1) and texts[3] == output_text(r2)


def test_input_items_are_paginated_and_valid(server, client):
    r1 = raw_create(client, input=[{"role": "user", "content": f"Line {i}."} for i in range(5)],
                    max_output_tokens=16)
    raw = httpx.get(f"{server.url}/v1/responses/{r1['id']}/input_items", params={"limit": 2})
    validate(raw.json(), "ResponseItemList")
    first = raw.json()
    assert [it["content"][0]["text"] for it in first["data"]] == ["Line 4.", "Line 3."]
    assert first["has_more"] is True and first["last_id"] == first["data"][-1]["id"]
    all_desc = list(client.responses.input_items.list(r1["id"], limit=2))  # auto-paginates
    assert [it.content[0].text for it in all_desc] == [f"Line {i}." for i in range(4, -1, -1)]
    asc = client.responses.input_items.list(r1["id"], order="asc", limit=3,
                                            after=all_desc[-1].id)
    assert [it.content[0].text for it in asc.data] == ["Line 1.", "Line 2.", "Line 3."]
    assert asc.has_more is True


def test_delete_forgets_the_response(client):
    r = raw_create(client, input="Hi.", max_output_tokens=16)
    client.responses.delete(r["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r["id"])
    with pytest.raises(openai.NotFoundError):  # a deleted response cannot be continued
        client.responses.create(model=MODEL, input="Again.", previous_response_id=r["id"])


def test_store_false_is_not_retrievable(client):
    r = raw_create(client, input="Hi.", max_output_tokens=16, store=False)
    assert r["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r["id"])


def test_cancel_stops_a_background_response(server, client):
    r = client.responses.create(model=MODEL, input="Write a long essay.", background=True,
                                max_output_tokens=2000, extra_body=LONG)
    assert r.status in ("queued", "in_progress") and r.background is True
    raw = client.responses.with_raw_response.cancel(r.id)
    validate(raw.http_response.json(), "Response")
    assert raw.parse().status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    assert client.responses.cancel(r.id).status == "cancelled"  # idempotent
    for _ in range(50):
        h = httpx.get(server.url + "/health").json()
        if sum(m["running"] for m in h["models"].values()) == 0:
            break
        time.sleep(0.1)
    assert sum(m["running"] for m in h["models"].values()) == 0


def test_input_tokens_counts_the_prompt_a_create_would_use(client):
    kw = {"input": "How many tokens is this?", "instructions": "Answer briefly."}
    raw = client.responses.input_tokens.with_raw_response.count(model=MODEL, **kw)
    validate(raw.http_response.json(), "TokenCountsResource")
    n = raw.parse()
    assert n.object == "response.input_tokens" and n.input_tokens > 0
    r = raw_create(client, max_output_tokens=16, **kw)
    assert r["usage"]["input_tokens"] == n.input_tokens


def test_metadata_user_and_sampling_fields_are_echoed(client):
    r = raw_create(client, input="Hi.", max_output_tokens=16, metadata={"team": "ferry"},
                   user="u-1", temperature=0.5, top_p=0.9, parallel_tool_calls=False,
                   truncation="auto", include=["message.output_text.logprobs"], top_logprobs=2)
    assert r["metadata"] == {"team": "ferry"} and r["user"] == "u-1"
    assert (r["temperature"], r["top_p"], r["parallel_tool_calls"], r["truncation"]) == \
        (0.5, 0.9, False, "auto")
    part = r["output"][0]["content"][0]
    assert len(part["logprobs"]) == r["usage"]["output_tokens"]
    assert all(len(lp["top_logprobs"]) == 2 for lp in part["logprobs"])
