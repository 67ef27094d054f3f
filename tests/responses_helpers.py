"""Helpers of the Responses API tests: raw streams, and validation of every object and event
against the official OpenAI document."""

from __future__ import annotations

import functools
import json

import httpx
from httpx_sse import EventSource
from openai_spec import _document, validate

MODEL = "default"


@functools.cache
def event_schemas() -> dict[str, str]:
    """Event ``type`` -> the spec's schema name, from ``ResponseStreamEvent``."""
    schemas = _document()["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        out[schemas[name]["properties"]["type"]["enum"][0]] = name
    return out


def check_event(ev: dict) -> None:
    validate(ev, event_schemas()[ev["type"]])


def check_stream(events: list[dict]) -> dict:
    """Every event valid, numbered 0..n-1, framed by created/in_progress and one terminal
    event; every item opened is closed; returns the final Response object."""
    for ev in events:
        check_event(ev)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types[:3]
    assert types[-1] in ("response.completed", "response.incomplete", "response.failed")
    assert types.count("response.output_item.added") == types.count("response.output_item.done")
    final = events[-1]["response"]
    validate(final, "Response")
    texts = {}
    for e in events:
        if e["type"] == "response.output_text.delta":
            texts[e["item_id"]] = texts.get(e["item_id"], "") + e["delta"]
    for item in final["output"]:
        if item["type"] == "message":
            assert item["content"][0]["text"] == texts.get(item["id"], "")
    return final


def sse_events(response: httpx.Response) -> list[dict]:
    out = []
    for sse in EventSource(response).iter_sse():
        data = json.loads(sse.data)
        assert sse.event == data["type"], (sse.event, data["type"])
        out.append(data)
    return out


def stream(url: str, body: dict, headers: dict | None = None) -> list[dict]:
    with httpx.stream("POST", url + "/v1/responses", json={"model": MODEL, **body,
                                                           "stream": True},
                      headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def output_text(response: dict) -> str:
    return "".join(p["text"] for it in response["output"] if it["type"] == "message"
                   for p in it["content"] if p["type"] == "output_text")
