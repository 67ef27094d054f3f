"""End to end through the real server and the official openai client (strict validation),
plus raw responses validated against the OpenAI OpenAPI document."""

from __future__ import annotations

import json

import httpx
from httpx_sse import connect_sse
from openai_spec import validate

MSG = [{"role": "user", "content": "Name three colours."}]


def sse_json(http: httpx.Client, path: str, body: dict) -> list[dict]:
    with connect_sse(http, "POST", path, json=body) as es:
        assert es.response.status_code == 200
        assert es.response.headers["content-type"].startswith("text/event-stream")
        events = [e.data for e in es.iter_sse()]
    assert events[-1] == "[DONE]"
    return [json.loads(d) for d in events[:-1]]


def test_chat_completion_through_official_client(client):
    r = client.chat.completions.create(model="default", messages=MSG, max_tokens=16)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_through_official_client(client):
    chunks = list(client.chat.completions.create(model="default", messages=MSG, max_tokens=16,
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_text_completion_through_official_client(client, server):
    r = client.completions.create(model="default", prompt="The capital of France is",
                                  max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    # Streamed text completions: like OpenAI's own API, intermediate chunks carry
    # `finish_reason: null`, which the spec (and so the SDK's strict mode) does not allow for
    # `Completion`; the stream is read with the SDK in its default (non-strict) mode.
    import openai

    lax = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    s = list(lax.completions.create(model="default", prompt="The capital of France is",
                                    max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    assert all(c.choices[0].finish_reason is None for c in s[:-1])
    assert s[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_response_and_chunks_match_the_openai_schemas(http):
    body = {"messages": MSG, "max_tokens": 12, "logprobs": True, "top_logprobs": 2}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    validate(r.json(), "CreateChatCompletionResponse")
    for chunk in sse_json(http, "/v1/chat/completions",
                          {**body, "stream": True, "stream_options": {"include_usage": True}}):
        validate(chunk, "CreateChatCompletionStreamResponse")


def test_completion_response_matches_the_openai_schema(http):
    for body in ({"prompt": "Hello", "max_tokens": 5},
                 {"prompt": ["a", "b"], "max_tokens": 3, "n": 2, "logprobs": 2, "echo": True}):
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        validate(r.json(), "CreateCompletionResponse")
    chunks = sse_json(http, "/v1/completions", {"prompt": "Hi", "max_tokens": 4, "stream": True})
    for chunk in chunks[:-1]:  # OpenAI sends finish_reason null until the last chunk
        assert chunk["choices"][0]["finish_reason"] is None
        chunk["choices"][0]["finish_reason"] = "length"
        validate(chunk, "CreateCompletionResponse")
    validate(chunks[-1], "CreateCompletionResponse")


def test_models_match_the_openai_schemas(http, client):
    r = http.get("/v1/models")
    validate(r.json(), "ListModelsResponse")
    mid = r.json()["data"][0]["id"]
    validate(http.get(f"/v1/models/{mid}").json(), "Model")
    assert client.models.retrieve(mid).id == mid


def test_health_is_ok_when_ready(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_prompt_list_gives_one_choice_per_prompt_and_n(http):
    r = http.post("/v1/completions", json={"prompt": ["One", "Two"], "n": 2, "max_tokens": 3})
    choices = r.json()["choices"]
    assert sorted(c["index"] for c in choices) == [0, 1, 2, 3]


def test_echo_prepends_the_prompt(http):
    r = http.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 3, "echo": True})
    assert r.json()["choices"][0]["text"].startswith("Once upon")


def test_token_prompt_is_accepted(http):
    tokens = [504, 3458, 282]
    r = http.post("/v1/completions", json={"prompt": tokens, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3


def test_chat_message_carries_empty_annotations_as_openai_does(client, http):
    r = client.chat.completions.create(model="default", messages=MSG, max_tokens=4)
    assert r.choices[0].message.annotations == []
    raw = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4}).json()
    assert raw["choices"][0]["message"]["annotations"] == []
    validate(raw, "CreateChatCompletionResponse")
