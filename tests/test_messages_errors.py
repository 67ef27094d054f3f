"""Bad input on the Messages API: Anthropic's envelope ``{"type": "error", "error": {"type",
"message"}}`` with Anthropic's status codes, on ``/v1/messages`` only (the OpenAI routes keep
theirs); the official client raises its typed errors; the server keeps serving."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import FerryServer, anthropic_client

from ferry.errors import InternalError, Overloaded, QueueTimeout, ServiceUnavailable
from ferry.protocol.anthropic import error_body

OK = {"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
           "RU5ErkJggg==")
TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {}}}
USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f",
                                         "input": {}}]}


def result(tid: str = "toolu_1") -> dict:
    return {"type": "tool_result", "tool_use_id": tid, "content": "ok"}


def user(*blocks) -> dict:
    return {"role": "user", "content": list(blocks)}


def anthropic_error(r: httpx.Response, status: int, etype: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}
    assert body["error"]["type"] == etype and body["error"]["message"]
    return body["error"]["message"]


BAD_BODIES = {
    "max_tokens missing": {k: v for k, v in OK.items() if k != "max_tokens"},
    "max_tokens 0": {**OK, "max_tokens": 0},
    "max_tokens text": {**OK, "max_tokens": "ten"},
    "model missing": {k: v for k, v in OK.items() if k != "model"},
    "messages empty": {**OK, "messages": []},
    "role system": {**OK, "messages": [{"role": "system", "content": "Hi"}]},
    "content missing": {**OK, "messages": [{"role": "user"}]},
    "content empty": {**OK, "messages": [{"role": "user", "content": ""}]},
    "text block empty": {**OK, "messages": [user({"type": "text", "text": ""})]},
    "unknown block": {**OK, "messages": [user({"type": "video", "url": "x"})]},
    "system number": {**OK, "system": 5},
    "temperature above 1": {**OK, "temperature": 1.5},
    "temperature negative": {**OK, "temperature": -0.1},
    "top_p 0": {**OK, "top_p": 0},
    "top_p above 1": {**OK, "top_p": 1.5},
    "top_k negative": {**OK, "top_k": -1},
    "stop_sequences string": {**OK, "stop_sequences": "END"},
    "stream string": {**OK, "stream": "yes"},
    "metadata unknown key": {**OK, "metadata": {"session": "x"}},
    "tool name": {**OK, "tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]},
    "tool schema not object": {**OK, "tools": [{"name": "f", "input_schema": {"type": "array"}}]},
    "tool without schema": {**OK, "tools": [{"name": "f"}]},
    "server tool": {**OK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    "tool_choice unknown": {**OK, "tools": [TOOL], "tool_choice": {"type": "sometimes"}},
    "tool_choice tool without name": {**OK, "tools": [TOOL], "tool_choice": {"type": "tool"}},
    "tool_choice names no tool": {**OK, "tools": [TOOL],
                                  "tool_choice": {"type": "tool", "name": "g"}},
    "tool_choice any without tools": {**OK, "tool_choice": {"type": "any"}},
    "image media type": {**OK, "messages": [user({"type": "image", "source": {
        "type": "base64", "media_type": "image/tiff", "data": PNG_1PX}})]},
    "image on a model without vision": {**OK, "messages": [user({"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": PNG_1PX}})]},
    "image url not allowed": {**OK, "messages": [user({"type": "image", "source": {
        "type": "url", "url": "http://127.0.0.1:9/x.png"}})]},
    # conversation rules
    "tool_use without tool_result": {**OK, "tools": [TOOL], "messages": [
        OK["messages"][0], USE, {"role": "user", "content": "and?"}]},
    "tool_use last": {**OK, "tools": [TOOL], "messages": [OK["messages"][0], USE]},
    "tool_result without tool_use": {**OK, "tools": [TOOL], "messages": [user(result())]},
    "tool_result for another id": {**OK, "tools": [TOOL], "messages": [
        OK["messages"][0], USE, user(result("toolu_2"))]},
    "tool_result after text": {**OK, "tools": [TOOL], "messages": [
        OK["messages"][0], USE, user({"type": "text", "text": "here"}, result())]},
    "tool blocks without tools": {**OK, "messages": [OK["messages"][0], USE, user(result())]},
    "tool_use in a user message": {**OK, "tools": [TOOL], "messages": [user(USE["content"][0])]},
    "tool_result in an assistant message": {**OK, "tools": [TOOL], "messages": [
        OK["messages"][0], {"role": "assistant", "content": [result()]}]},
    "prefill ends with whitespace": {**OK, "messages": [
        OK["messages"][0], {"role": "assistant", "content": "The answer is "}]},
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_request_is_400_invalid_request_error(server, case):
    r = httpx.post(server.url + "/v1/messages", json=BAD_BODIES[case], timeout=60)
    anthropic_error(r, 400, "invalid_request_error")


def test_messages_are_worded_as_anthropic_words_them(http):
    r = http.post("/v1/messages", json=BAD_BODIES["max_tokens missing"])
    assert anthropic_error(r, 400, "invalid_request_error") == "max_tokens: Field required"
    r = http.post("/v1/messages", json=BAD_BODIES["tool_use without tool_result"])
    assert anthropic_error(r, 400, "invalid_request_error").startswith(
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_1.")
    r = http.post("/v1/messages/count_tokens", json={"model": "default", "messages": []})
    assert anthropic_error(r, 400, "invalid_request_error").startswith("messages:")


def test_official_client_raises_typed_errors(server):
    import anthropic

    c = anthropic_client(server.url, timeout=60)
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="default", max_tokens=4, extra_body={"temperature": 3},
                          messages=OK["messages"])
    assert e.value.status_code == 400 and e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="claude-nope", max_tokens=4, messages=OK["messages"])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        c.messages.count_tokens(model="default", messages=[{"role": "user", "content": ""}])


def test_unknown_route_and_context_overflow(http):
    anthropic_error(http.post("/v1/messages/batches", json={}), 404, "not_found_error")
    long = {**OK, "messages": [{"role": "user", "content": "word " * 5000}]}
    assert "context" in anthropic_error(http.post("/v1/messages", json=long), 400,
                                        "invalid_request_error")


def test_openai_routes_keep_the_openai_envelope(http):
    r = http.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_huge_max_tokens_is_capped_at_the_context(http):
    r = http.post("/v1/messages", json={**OK, "max_tokens": 1_000_000})
    assert r.status_code == 200 and r.json()["stop_reason"] in ("end_turn",
                                                               "model_context_window_exceeded")


def test_status_mapping_of_server_side_errors():
    assert error_body(Overloaded("full"))[0] == 529
    assert error_body(Overloaded("full"))[1]["error"]["type"] == "overloaded_error"
    assert error_body(QueueTimeout("late"))[0] == 529
    assert error_body(ServiceUnavailable("loading"))[0] == 529
    assert error_body(InternalError("bug"), "req_1") == (500, {
        "type": "error", "error": {"type": "api_error", "message": "bug"}, "request_id": "req_1"})


def test_server_keeps_serving_after_bad_input(server, http):
    for body in list(BAD_BODIES.values())[:10]:
        http.post("/v1/messages", json=body)
    http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    r = http.post("/v1/messages", json=OK)
    assert r.status_code == 200 and r.json()["type"] == "message"


@pytest.fixture(scope="module")
def guarded():
    s = FerryServer("--parallel", "1", "--queue-timeout", "0.5", "--api-key", "k1",
                    "--max-body-size", "4096")
    yield s
    s.stop()


def test_keys_as_x_api_key_or_bearer_and_401_in_anthropic_envelope(guarded):
    import anthropic

    url = guarded.url + "/v1/messages"
    anthropic_error(httpx.post(url, json=OK), 401, "authentication_error")
    anthropic_error(httpx.post(url, json=OK, headers={"x-api-key": "k2"}), 401,
                    "authentication_error")
    for h in ({"x-api-key": "k1"}, {"Authorization": "Bearer k1"}):
        r = httpx.post(url, json=OK, timeout=60, headers={**h, "anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=guarded.url, api_key="wrong", max_retries=0).messages.create(
            **OK)
    r = httpx.post(guarded.url + "/v1/chat/completions", json={})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_body_too_large_is_413_request_too_large(guarded):
    big = {**OK, "messages": [{"role": "user", "content": "x" * 8000}]}
    anthropic_error(httpx.post(guarded.url + "/v1/messages", json=big,
                               headers={"x-api-key": "k1"}), 413, "request_too_large")


def test_busy_server_is_529_or_an_error_event_once_streaming(guarded):
    key = {"x-api-key": "k1"}
    blocker = threading.Thread(target=httpx.post, args=(guarded.url + "/v1/completions",),
                               kwargs={"json": {"prompt": "x", "max_tokens": 400,
                                                "ignore_eos": True}, "headers": key,
                                       "timeout": 120})
    blocker.start()
    time.sleep(0.3)
    with httpx.Client(base_url=guarded.url, timeout=60, headers=key) as c:
        anthropic_error(c.post("/v1/messages", json=OK), 529, "overloaded_error")
        with c.stream("POST", "/v1/messages", json={**OK, "stream": True}) as s:
            assert s.status_code == 200
            text = s.read().decode()
        blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith(":")]
        assert blocks[0].startswith("event: message_start")
        assert blocks[-1].startswith("event: error\ndata: ")
        assert '"type":"overloaded_error"' in blocks[-1]
        blocker.join()
        assert c.post("/v1/messages", json=OK).status_code == 200
