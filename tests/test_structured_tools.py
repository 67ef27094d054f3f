"""Tool calling: request validation, prompt rendering, output parsing/streaming, real-model calls."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_structured import (
    SEEDS,
    SmolModel,
    smol_model,  # noqa: F401  (the session fixture "smol")
)

from ferry.errors import InvalidRequest, Unsupported
from ferry.structured.constraint import compile_json_schema
from ferry.structured.tools import (
    MAX_PARALLEL_CALLS,
    ToolStreamParser,
    parse_tool_output,
    prepare_messages,
    tool_output_schema,
    validate_tools,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "$defs": {"tz": {"type": "string", "maxLength": 30}},
            "type": "object",
            "properties": {"timezone": {"$ref": "#/$defs/tz"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
PING = {"type": "function", "function": {"name": "ping"}}
TOOLS = [WEATHER, TIME, PING]


# -- validate_tools --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tools",
    [
        "get_weather",
        [{"type": "retrieval"}],
        [{"type": "function"}],
        [{"type": "function", "function": {"name": "has space"}}],
        [{"type": "function", "function": {"name": "x" * 65}}],
        [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
        [{"type": "function", "function": {"name": "f", "description": 3}}],
        [PING, PING],
    ],
)
def test_malformed_tools_are_rejected(tools: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate_tools(tools, "auto", None)
    assert e.value.param == "tools"


def test_unenforceable_tool_parameters_are_unsupported() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}
    with pytest.raises(Unsupported) as e:
        validate_tools([tool], "auto", None)
    assert e.value.param == "tools" and "'not'" in e.value.message


@pytest.mark.parametrize(
    "choice",
    [
        "sometimes",
        {"type": "function"},
        {"type": "function", "function": {"name": "get_stock"}},
        {"type": "tool", "function": {"name": "get_weather"}},
        3,
    ],
)
def test_bad_or_unknown_tool_choice_is_rejected(choice: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate_tools(TOOLS, choice, None)
    assert e.value.param == "tool_choice"


def test_tool_choice_without_tools_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as e:
        validate_tools(None, "required", None)
    assert e.value.param == "tool_choice"


def test_parallel_tool_calls_must_be_boolean() -> None:
    with pytest.raises(InvalidRequest):
        validate_tools(TOOLS, "auto", "yes")


def test_valid_tool_requests_pass() -> None:
    for choice in (
        None,
        "none",
        "auto",
        "required",
        {"type": "function", "function": {"name": "ping"}},
    ):
        validate_tools(TOOLS, choice, True)
    validate_tools(None, None, None)


# -- prepare_messages ------------------------------------------------------------------------


def test_tools_are_described_in_the_system_prompt() -> None:
    out = prepare_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        TOOLS,
        "auto",
    )
    assert [m["role"] for m in out] == ["system", "user"]
    system = out[0]["content"]
    assert system.startswith("Be brief.")
    for name in ("get_weather", "get_time", "ping", '"tool_calls"', '"content"'):
        assert name in system


def test_history_with_calls_and_results_renders_as_plain_messages() -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris and time in Tokyo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city":"Paris","unit":"celsius"}',
                    },
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"timezone":"Asia/Tokyo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21:04"}]},
    ]
    out = prepare_messages(msgs, TOOLS, "auto")
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in out)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert json.loads(out[2]["content"]) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
            {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}},
        ]
    }
    assert "get_weather (call call_1): 18C sunny" in out[3]["content"]
    assert "get_time (call call_2): 21:04" in out[3]["content"]


def test_tool_choice_none_adds_no_tool_prompt() -> None:
    out = prepare_messages([{"role": "user", "content": "hi"}], TOOLS, "none")
    assert out == [{"role": "user", "content": "hi"}]


# -- tool_output_schema ----------------------------------------------------------------------


def call(name: str, args: dict) -> dict:
    return {"name": name, "arguments": args}


def test_output_schema_per_tool_choice() -> None:
    weather = call("get_weather", {"city": "Oslo", "unit": "celsius"})
    bad_args = call("get_weather", {"city": "Oslo"})
    text = {"content": "hello"}
    auto = tool_output_schema(TOOLS, "auto", True)
    required = tool_output_schema(TOOLS, "required", True)
    named = tool_output_schema(TOOLS, {"type": "function", "function": {"name": "get_time"}}, False)
    single = tool_output_schema(TOOLS, "required", False)
    assert tool_output_schema(TOOLS, "none", True) is None
    ok = jsonschema.Draft202012Validator
    assert ok(auto).is_valid({"tool_calls": [weather, call("ping", {})]})
    assert ok(auto).is_valid(text)
    assert not ok(auto).is_valid({"tool_calls": [bad_args]})
    assert not ok(required).is_valid(text)
    assert not ok(required).is_valid({"tool_calls": []})
    assert ok(named).is_valid({"tool_calls": [call("get_time", {"timezone": "UTC"})]})
    assert not ok(named).is_valid({"tool_calls": [weather]})
    assert not ok(single).is_valid({"tool_calls": [weather, weather]})
    assert ok(auto).is_valid({"tool_calls": [call("ping", {})] * MAX_PARALLEL_CALLS})
    assert not ok(auto).is_valid({"tool_calls": [call("ping", {})] * (MAX_PARALLEL_CALLS + 1)})


# -- parsing and streaming -------------------------------------------------------------------

CALLS_TEXT = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "S\\u00e3o \\"Paulo\\" {x}", '
    '"unit": "celsius"}}, {"name": "ping", "arguments": {}}, '
    '{"name": "get_time", "arguments": {"timezone": "Europe/Oslo"}}]}'
)
CONTENT_TEXT = '{"content": "Hi! \\ud83d\\ude00 caf\\u00e9 \\"quoted\\"\\nline"}'


def test_parse_tool_calls() -> None:
    content, calls = parse_tool_output(CALLS_TEXT)
    assert content is None
    assert [c.name for c in calls] == ["get_weather", "ping", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": 'São "Paulo" {x}', "unit": "celsius"}
    assert calls[1].arguments == "{}"
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in calls)
    assert len({c.id for c in calls}) == 3
    assert calls[0].to_dict()["type"] == "function"


def test_parse_text_reply_and_plain_text() -> None:
    assert parse_tool_output(CONTENT_TEXT) == ('Hi! 😀 café "quoted"\nline', [])
    assert parse_tool_output("no json here") == ("no json here", [])


def reassemble(deltas: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    content = ""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        content += d.get("content", "")
        for tc in d.get("tool_calls", []):
            if "id" in tc:
                assert tc["index"] not in calls and tc["type"] == "function"
                assert tc["function"]["arguments"] == ""
                calls[tc["index"]] = [tc["function"]["name"], ""]
            else:
                assert set(tc) == {"index", "function"}
            calls[tc["index"]][1] += tc["function"]["arguments"]
    return content, [(n, a) for _, (n, a) in sorted(calls.items())]


@settings(max_examples=300, deadline=None)
@given(
    text=st.sampled_from([CALLS_TEXT, CONTENT_TEXT, "plain {text}"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40),
)
def test_any_split_streams_the_same_result(text: str, cuts: list[int]) -> None:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    parser = ToolStreamParser()
    deltas = [d for p in pieces for d in parser.feed(p)] + parser.finish()
    content, calls = parse_tool_output(text)
    streamed_content, streamed_calls = reassemble(deltas)
    assert streamed_calls == [(c.name, c.arguments) for c in calls]
    assert [(c.name, c.arguments) for c in parser.calls] == streamed_calls
    assert parser.content == content
    if content is not None:
        assert streamed_content == content


# -- real model ------------------------------------------------------------------------------


def run_tools(smol: SmolModel, user: str, choice: object, parallel: bool | None) -> list:
    validate_tools(TOOLS, choice, parallel)
    schema = tool_output_schema(TOOLS, choice, parallel)
    factory = compile_json_schema(schema, smol.vocab, param="tools")
    messages = prepare_messages([{"role": "user", "content": user}], TOOLS, choice, parallel)
    prompt = smol.chat_prompt(messages)
    return [smol.generate(prompt, factory(), seed=s, max_tokens=120) for s in SEEDS]


def check_calls(text: str, allowed: set[str]) -> list:
    content, calls = parse_tool_output(text)
    assert content is None and calls
    params = {t["function"]["name"]: t["function"].get("parameters") for t in TOOLS}
    for c in calls:
        assert c.name in allowed
        jsonschema.validate(json.loads(c.arguments), params[c.name] or {"type": "object"})
    return calls


@pytest.mark.parametrize(
    ("choice", "parallel", "allowed"),
    [
        ("required", False, {"get_weather", "get_time", "ping"}),
        ({"type": "function", "function": {"name": "get_time"}}, False, {"get_time"}),
        ("required", True, {"get_weather", "get_time", "ping"}),
    ],
)
def test_model_calls_are_parseable_and_validate(
    smol: SmolModel, choice: object, parallel: bool, allowed: set[str]
) -> None:
    runs = run_tools(smol, "What's the weather in Paris and the time in Tokyo?", choice, parallel)
    complete = [r for r in runs if r.complete]
    assert len(complete) >= 4, [r.text for r in runs]
    for r in complete:
        calls = check_calls(r.text, allowed)
        if parallel is False:
            assert len(calls) == 1


def test_model_auto_answers_with_calls_or_text(smol: SmolModel) -> None:
    runs = run_tools(smol, "What's the weather in Paris?", "auto", True)
    complete = [r for r in runs if r.complete]
    assert len(complete) >= 4, [r.text for r in runs]
    for r in complete:
        content, calls = parse_tool_output(r.text)
        if calls:
            check_calls(r.text, {"get_weather", "get_time", "ping"})
        else:
            assert isinstance(content, str)


def test_model_output_streams_to_the_same_calls(smol: SmolModel) -> None:
    (run, *_) = run_tools(smol, "Time in Tokyo please.", "required", True)
    parser = ToolStreamParser()
    tokens = smol.tokenize(run.text, special=False)
    deltas = []
    for t in tokens:  # one token's text at a time, as the engine streams
        deltas += parser.feed(smol.vocab.pieces[t].decode("utf-8", errors="replace"))
    deltas += parser.finish()
    _, calls = parse_tool_output(run.text)
    assert reassemble(deltas)[1] == [(c.name, c.arguments) for c in calls]
