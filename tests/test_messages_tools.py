"""Tools on the Messages API through the official ``anthropic`` client (strict validation):
``tool_choice`` any/tool force ``tool_use`` blocks whose input validates against the tool's
``input_schema``; ``tool_result`` goes back in the next turn; streamed tool input arrives as
``input_json_delta`` and assembles into the unstreamed input."""

from __future__ import annotations

import json

import httpx
import jsonschema
from httpx_sse import connect_sse

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": False}}
TIME = {"name": "get_time", "description": "Current time in a timezone",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}},
                         "required": ["timezone"], "additionalProperties": False}}
SCHEMAS = {t["name"]: t["input_schema"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]

# the newest SDK leaves sampling parameters out of create(); they still travel in the body
GREEDY = {"temperature": 0}


def tool_uses(m) -> list:
    assert m.stop_reason == "tool_use", m
    uses = [b for b in m.content if b.type == "tool_use"]
    assert uses
    for u in uses:
        assert u.id.startswith("toolu_")
        jsonschema.validate(u.input, SCHEMAS[u.name])
    return uses


def test_tool_choice_any_forces_a_valid_tool_use(anth):
    m = anth.messages.create(model="default", max_tokens=150, extra_body=GREEDY, messages=ASK,
                             tools=[WEATHER, TIME], tool_choice={"type": "any"})
    tool_uses(m)


def test_tool_choice_tool_calls_that_tool_once_when_parallel_use_is_disabled(anth):
    m = anth.messages.create(model="default", max_tokens=150, extra_body=GREEDY, messages=ASK,
                             tools=[WEATHER, TIME],
                             tool_choice={"type": "tool", "name": "get_time",
                                          "disable_parallel_tool_use": True})
    uses = tool_uses(m)
    assert [u.name for u in uses] == ["get_time"]


def test_tool_choice_none_answers_in_text(anth):
    m = anth.messages.create(model="default", max_tokens=20, messages=ASK, tools=[WEATHER],
                             tool_choice={"type": "none"})
    assert [b.type for b in m.content] == ["text"] and m.stop_reason != "tool_use"


def test_tool_choice_auto_answers_in_text_or_a_valid_tool_use(anth):
    m = anth.messages.create(model="default", max_tokens=150, extra_body=GREEDY, messages=ASK,
                             tools=[WEATHER, TIME])
    if m.stop_reason == "tool_use":
        tool_uses(m)
    else:
        assert [b.type for b in m.content] == ["text"]


def test_tool_result_round_trip(anth):
    first = anth.messages.create(model="default", max_tokens=150, extra_body=GREEDY, messages=ASK,
                                 tools=[WEATHER], tool_choice={"type": "tool",
                                                               "name": "get_weather"})
    uses = tool_uses(first)
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "18 degrees and sunny"}
               for u in uses]
    turn2 = [*ASK, first.to_param(), {"role": "user", "content": results}]
    second = anth.messages.create(model="default", max_tokens=40, extra_body=GREEDY,
                                  messages=turn2, tools=[WEATHER], tool_choice={"type": "none"})
    assert second.content[0].type == "text" and second.content[0].text
    n1 = anth.messages.count_tokens(model="default", messages=ASK, tools=[WEATHER]).input_tokens
    n2 = anth.messages.count_tokens(model="default", messages=turn2, tools=[WEATHER])
    assert n2.input_tokens > n1  # the call and its result are in the prompt
    # a result given as blocks, marked as an error, is accepted too
    errs = [{"type": "tool_result", "tool_use_id": u.id, "is_error": True,
             "content": [{"type": "text", "text": "city not found"}]} for u in uses]
    third = anth.messages.create(model="default", max_tokens=8, tools=[WEATHER],
                                 messages=[*ASK, first.to_param(),
                                           {"role": "user", "content": errs}])
    assert third.usage.output_tokens > 0


def test_streamed_tool_use_equals_the_unstreamed_one(anth):
    # one call (a near tie between "]" and another call is where greedy runs could part), and
    # both measured requests find the prompt in the prefix cache (same cache state)
    kw = {"model": "default", "max_tokens": 150, "extra_body": GREEDY, "messages": ASK,
          "tools": [WEATHER, TIME], "tool_choice": {"type": "any",
                                                    "disable_parallel_tool_use": True}}
    anth.messages.create(**kw)
    plain = anth.messages.create(**kw)
    with anth.messages.stream(**kw) as s:
        final = s.get_final_message()
    tool_uses(final)
    strip = [{k: v for k, v in b.model_dump().items() if k != "id"} for b in plain.content]
    assert [{k: v for k, v in b.model_dump().items() if k != "id"}
            for b in final.content] == strip
    assert final.stop_reason == plain.stop_reason == "tool_use"


def test_tool_input_streams_as_input_json_deltas(server):
    body = {"model": "default", "max_tokens": 150, "temperature": 0, "stream": True,
            "messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    with httpx.Client(base_url=server.url, timeout=120) as c, \
            connect_sse(c, "POST", "/v1/messages", json=body) as es:
        events = [json.loads(e.data) for e in es.iter_sse()]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert starts and all(s["content_block"]["type"] == "tool_use" for s in starts)
    assert starts[0]["content_block"]["input"] == {}
    partial = "".join(e["delta"]["partial_json"] for e in events
                      if e["type"] == "content_block_delta" and e["index"] == 0)
    assert all(e["delta"]["type"] == "input_json_delta" for e in events
               if e["type"] == "content_block_delta")
    jsonschema.validate(json.loads(partial), WEATHER["input_schema"])
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
