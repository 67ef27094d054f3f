"""Anthropic's Messages API end to end through the official ``anthropic`` client (strict
validation): plain and streamed messages, stop sequences, prefill, count_tokens, and resumable
streams (``X-Conversation-Id``) as on chat completions."""

from __future__ import annotations

import json
import random
import time

import httpx
from httpx_sse import EventSource, connect_sse
from pydantic import BaseModel
from rawhttp import stream_prefix

ASK = [{"role": "user", "content": "Name three colours."}]

# the newest SDK leaves sampling parameters out of create(); they still travel in the body
GREEDY = {"temperature": 0}


def prompt_total(usage) -> int:
    return (usage.input_tokens + (usage.cache_read_input_tokens or 0)
            + (usage.cache_creation_input_tokens or 0))


def test_message_through_official_client(anth):
    m = anth.messages.create(model="default", max_tokens=24, messages=ASK)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert 0 < m.usage.output_tokens <= 24 and prompt_total(m.usage) > 0


def test_system_as_string_or_blocks_gives_one_prompt(anth):
    kw = {"model": "default", "messages": ASK}
    a = anth.messages.count_tokens(system="Answer in French.", **kw).input_tokens
    b = anth.messages.count_tokens(system=[{"type": "text", "text": "Answer in French."}], **kw)
    longer = anth.messages.count_tokens(system="Answer in French, and keep it short.", **kw)
    assert a == b.input_tokens < longer.input_tokens


def test_stream_helper_final_message_equals_the_unstreamed_one(anth):
    kw = {"model": "default", "max_tokens": 40, "extra_body": GREEDY, "system": "Be brief.",
          "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    anth.messages.create(**kw)  # both measured requests then find the prompt cached
    plain = anth.messages.create(**kw)
    with anth.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.model_dump(exclude={"id", "usage"}) == plain.model_dump(exclude={"id", "usage"})
    assert text == plain.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert prompt_total(final.usage) == prompt_total(plain.usage)


def test_stream_events_come_in_anthropic_order(server):
    body = {"model": "default", "max_tokens": 12, "stream": True, "messages": ASK}
    with httpx.Client(base_url=server.url, timeout=120) as c, \
            connect_sse(c, "POST", "/v1/messages", json=body) as es:
        assert es.response.headers["content-type"].startswith("text/event-stream")
        events = [(e.event, json.loads(e.data)) for e in es.iter_sse()]
    names = [n for n, _ in events]
    assert all(n == d["type"] for n, d in events)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["output_tokens"] == 12 or delta["delta"]["stop_reason"] == "end_turn"


def test_stop_sequence_ends_the_text_and_is_reported(anth):
    kw = {"model": "default", "max_tokens": 30, "extra_body": GREEDY,
          "messages": [{"role": "user", "content": "Count from 1 to 20."}]}
    full = anth.messages.create(**kw).content[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[len(words) // 2]
    m = anth.messages.create(stop_sequences=["NEVER-SEEN", stop], **kw)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == full[:full.index(stop)]
    with anth.messages.stream(stop_sequences=[stop], **kw) as s:
        final = s.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)


def test_max_tokens_reached_is_max_tokens(anth):
    m = anth.messages.create(model="default", max_tokens=3, messages=ASK)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_final_assistant_message_is_continued(anth):
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    prefill = [*ask, {"role": "assistant", "content": "The capital of France is"}]
    m = anth.messages.create(model="default", max_tokens=8, extra_body=GREEDY, messages=prefill)
    assert m.content and m.content[0].text.strip()
    assert not m.content[0].text.startswith("The capital")  # the answer continues, not repeats
    n_plain = anth.messages.count_tokens(model="default", messages=ask).input_tokens
    n_prefill = anth.messages.count_tokens(model="default", messages=prefill).input_tokens
    assert n_prefill > n_plain


def test_count_tokens_equals_the_prompt_of_the_same_request(anth):
    msgs = [{"role": "user", "content": f"Say hello to visitor {random.random()}."}]
    n = anth.messages.count_tokens(model="default", system="Be kind.", messages=msgs)
    m = anth.messages.create(model="default", system="Be kind.", messages=msgs, max_tokens=4)
    assert n.input_tokens == prompt_total(m.usage)
    assert m.usage.cache_creation_input_tokens == 0


def test_first_message_from_assistant_and_consecutive_roles_are_accepted(anth):
    m = anth.messages.create(model="default", max_tokens=4, messages=[
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Tell me a colour."},
        {"role": "user", "content": [{"type": "text", "text": "Just one word."}]}])
    assert m.stop_reason in ("end_turn", "max_tokens")


def test_metadata_and_sampling_parameters_are_accepted(anth):
    m = anth.messages.create(model="default", max_tokens=6, messages=ASK, metadata={"user_id": "u-1"},
                             extra_headers={"anthropic-version": "2023-06-01"},
                             extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 20})
    assert m.usage.output_tokens > 0


def test_resumable_stream_survives_a_disconnect_and_replays_the_same_bytes(server):
    conv = f"msg-{random.random()}"
    body = {"model": "default", "max_tokens": 30, "stream": True, "messages": ASK}
    prefix, sock = stream_prefix(server.url, body, 200, headers={"X-Conversation-Id": conv},
                                 path="/v1/messages")
    sock.close()  # the client goes away; the generation runs on
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = httpx.post(server.url + "/v1/streams/lookup",
                          json={"conversation_ids": [conv]}).json()["data"][0]
        if info["is_done"]:
            break
        time.sleep(0.2)
    whole = httpx.get(f"{server.url}/v1/stream/{conv}", timeout=60).content
    assert whole.startswith(prefix)
    events = list(EventSource(httpx.get(f"{server.url}/v1/stream/{conv}")).iter_sse())
    assert events[0].event == "message_start" and events[-1].event == "message_stop"
    assert all(e.id is not None for e in events)
    with httpx.Client(base_url=server.url, timeout=120) as c:
        again = c.post("/v1/messages", json=body, headers={"X-Conversation-Id": conv + "-b"})
        assert again.headers["x-conversation-id"] == conv + "-b"
        assert again.content == c.get(f"/v1/stream/{conv}-b").content


class City(BaseModel):
    name: str
    country: str


def test_output_format_constrains_the_answer_to_the_schema(anth):
    m = anth.messages.parse(model="default", max_tokens=100, extra_body=GREEDY,
                            output_format=City,
                            messages=[{"role": "user", "content": "Describe Paris."}])
    assert m.stop_reason == "end_turn"
    assert isinstance(m.content[0].parsed_output, City)
