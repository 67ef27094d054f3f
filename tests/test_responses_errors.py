"""Bad input to the Responses API: every parameter's invalid values get an OpenAI-format error
with the right status naming the parameter, and the server keeps serving."""

from __future__ import annotations

import pytest
from test_errors import check

OK = {"model": "default", "input": "Hi.", "max_output_tokens": 16}
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
IMG = "data:image/png;base64,iVBORw0KGgo="

BAD_CREATE = [
    ({"input": 5}, "input"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input.0"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input.0.message.role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input.0.message.content"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMG,
                                              "detail": "huge"}]}]}, "input.0.message.content"),
    ({"input": [{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]},
     "input.0.function_call.call_id"),
    ({"input": [{"type": "function_call_output", "output": "x"}]},
     "input.0.function_call_output.call_id"),
    ({"input": [{"type": "item_reference", "id": "msg_unknown"}]}, "input.0.id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMG}]}]},
     "input"),  # this server has no projector (--mmproj)
    ({"instructions": 5}, "instructions"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 15}, "max_output_tokens"),
    ({"max_output_tokens": "many"}, "max_output_tokens"),
    ({"max_output_tokens": 10**9}, "max_output_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"tools": [{"type": "function"}]}, "tools.0.name"),
    ({"tools": [{**TOOL, "name": "bad name!"}]}, "tools"),
    ({"tools": [TOOL, TOOL]}, "tools"),
    ({"tools": [{**TOOL, "parameters": {"type": "nonsense"}}]}, "tools"),
    ({"tools": [{**TOOL, "strict": "yes"}]}, "tools.0.strict"),
    ({"tool_choice": "sometimes", "tools": [TOOL]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "g"}, "tools": [TOOL]}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.json_schema.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "bad name", "schema": {}}}},
     "text.format.json_schema.name"),
    ({"text": {"format": {"type": "json_schema", "name": "x",
                          "schema": {"type": "object", "properties": 5}}}}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}, "tools": [TOOL]}, "text.format"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"store": "yes"}, "store"),
    ({"background": "yes"}, "background"),
    ({"background": True, "store": False}, "background"),
    ({"stream": "yes"}, "stream"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"include": ["everything"]}, "include.0"),
    ({"user": 5}, "user"),
    ({"model": "no-such-model"}, None),
]


@pytest.mark.parametrize(("change", "param"), BAD_CREATE, ids=[p or "model" for _, p in BAD_CREATE])
def test_invalid_create_parameter_is_400_naming_it(http, change, param):
    r = http.post("/v1/responses", json={**OK, **change})
    if param is None:
        check(r, 404, code="model_not_found")
        return
    err = check(r, 400)
    assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_unknown_previous_response_is_404(http):
    check(http.post("/v1/responses", json={**OK, "previous_response_id": "resp_nope"}), 404,
          param="previous_response_id")


def test_context_too_long_is_400_unless_truncation_is_auto(http):
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": " ".join(["river light"] * 120)} for i in range(20)]
    turns[-1] = {"role": "user", "content": "Sum it up."}
    check(http.post("/v1/responses", json={**OK, "input": turns}), 400,
          code="context_length_exceeded")
    r = http.post("/v1/responses", json={**OK, "input": turns, "truncation": "auto"})
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["input_tokens"] < 2048


def test_bad_values_on_stored_response_routes(http):
    rid = http.post("/v1/responses", json=OK).json()["id"]
    base = f"/v1/responses/{rid}"
    check(http.get(base, params={"stream": "true", "starting_after": -1}), 400,
          param="starting_after")
    check(http.get(base, params={"starting_after": 3}), 400, param="starting_after")
    check(http.get(base, params={"stream": "true"}), 400, param="stream")  # not background
    check(http.get(base, params={"stream": "maybe"}), 400, param="stream")
    check(http.get(base, params={"include": "everything"}), 400, param="include.0")
    check(http.get(base + "/input_items", params={"limit": 0}), 400, param="limit")
    check(http.get(base + "/input_items", params={"limit": 101}), 400, param="limit")
    check(http.get(base + "/input_items", params={"order": "up"}), 400, param="order")
    check(http.get(base + "/input_items", params={"after": "msg_nope"}), 400, param="after")
    check(http.post(base + "/cancel"), 400)  # not a background response
    for method, path in (("GET", "/v1/responses/resp_nope"), ("DELETE", "/v1/responses/x"),
                         ("POST", "/v1/responses/resp_nope/cancel"),
                         ("GET", "/v1/responses/resp_nope/input_items")):
        check(http.request(method, path), 404)
    check(http.post("/v1/responses/input_tokens", json={"input": 5}), 400, param="input")
    check(http.post("/v1/responses/input_tokens", json={"input": "x", "tools": [{"type": "x"}]}),
          400)
    assert http.post("/v1/responses", json=OK).status_code == 200  # still serving
