"""Background responses: they run on after the client leaves, and any replica sharing the store
replays their events after ``starting_after`` and follows them live; they belong to their key."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from conftest import FerryServer
from rawhttp import stream_prefix
from responses_helpers import MODEL, check_stream, output_text, sse_events, stream

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}
BODY = {"model": MODEL, "input": "Tell me about rivers.", "background": True, "stream": True,
        "max_output_tokens": 80, "ignore_eos": True}


@pytest.fixture(scope="module", params=["memory", "redis"])
def replicas(request):
    """(A, B): one server twice with the memory store; two servers sharing a real Redis."""
    keys = ("--api-key", "alice", "--api-key", "bob")
    if request.param == "memory":
        a = FerryServer(*keys)
        yield a, a
        a.stop()
        return
    url = request.getfixturevalue("redis_url")
    a = FerryServer("--stream-store", url, *keys)
    b = FerryServer("--stream-store", url, *keys)
    yield a, b
    a.stop()
    b.stop()


def frames(data: bytes) -> list[dict]:
    """The complete events in ``data`` (pings and a partial last frame skipped)."""
    out = []
    for frame in data.split(b"\n\n")[:-1]:
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


def replay(server: FerryServer, rid: str, after: int | None = None,
           headers: dict = ALICE) -> list[dict]:
    params = {"stream": "true"} | ({} if after is None else {"starting_after": after})
    with httpx.stream("GET", f"{server.url}/v1/responses/{rid}", params=params, headers=headers,
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def sdk(server: FerryServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True, timeout=120)


def test_disconnect_then_resume_after_n_gives_exactly_the_whole_stream(replicas):
    a, b = replicas
    data, sock = stream_prefix(a.url, BODY, 1500, headers=ALICE, path="/v1/responses")
    sock.close()  # the client goes away mid-stream; the response runs on
    seen = frames(data)
    assert seen[0]["type"] == "response.created" and seen[0]["response"]["status"] == "queued"
    rid, last = seen[0]["response"]["id"], seen[-1]["sequence_number"]
    assert seen[-1]["type"] not in ("response.completed", "response.incomplete")
    rest = replay(b, rid, after=last)  # on the other replica, following live
    full = replay(a, rid)
    assert seen + rest == full
    final = check_stream(full)  # contiguous sequence numbers, every event valid
    assert final["status"] == "incomplete" and final["usage"]["output_tokens"] == 80
    # the official client resumes too, and the stored response is the final one
    events = list(sdk(b, "alice").responses.retrieve(rid, stream=True, starting_after=last))
    assert [e.sequence_number for e in events] == [e["sequence_number"] for e in rest]
    got = sdk(b, "alice").responses.retrieve(rid)
    assert got.status == "incomplete" and got.output_text == output_text(final)


def test_a_background_response_belongs_to_its_key(replicas):
    a, b = replicas
    r = httpx.post(a.url + "/v1/responses", json={**BODY, "stream": False,
                                                    "max_output_tokens": 16}, headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    rid = r.json()["id"]
    bob = sdk(b, "bob")
    for call in (lambda: bob.responses.retrieve(rid),
                 lambda: list(bob.responses.retrieve(rid, stream=True)),
                 lambda: bob.responses.input_items.list(rid),
                 lambda: bob.responses.cancel(rid), lambda: bob.responses.delete(rid),
                 lambda: bob.responses.create(model=MODEL, input="x", previous_response_id=rid)):
        with pytest.raises(openai.NotFoundError):
            call()
    alice = sdk(b, "alice")
    deadline = time.monotonic() + 60
    while alice.responses.retrieve(rid).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert alice.responses.retrieve(rid).status == "incomplete"
    nxt = alice.responses.create(model=MODEL, input="More.", previous_response_id=rid,
                                 max_output_tokens=16)
    assert nxt.previous_response_id == rid
    alice.responses.delete(rid)
    with pytest.raises(openai.NotFoundError):
        sdk(a, "alice").responses.retrieve(rid)


def test_cancel_on_another_replica_stops_the_generation(replicas):
    a, b = replicas
    r = httpx.post(a.url + "/v1/responses", headers=ALICE,
                   json={**BODY, "stream": False, "max_output_tokens": 1500}).json()
    assert sdk(b, "alice").responses.cancel(r["id"]).status == "cancelled"
    deadline = time.monotonic() + 5
    while True:
        h = httpx.get(a.url + "/health").json()
        if sum(m["running"] for m in h["models"].values()) == 0:
            break
        assert time.monotonic() < deadline, "the generation was not stopped"
        time.sleep(0.05)
    time.sleep(0.3)  # the stopped pump's last save must not undo the cancel
    assert sdk(a, "alice").responses.retrieve(r["id"]).status == "cancelled"


def test_failed_generation_sends_error_then_response_failed_and_records_expire():
    srv = FerryServer("--parallel", "1", "--queue-timeout", "1", "--response-ttl", "3")
    try:
        busy = httpx.post(srv.url + "/v1/responses", json={**BODY, "stream": False,
                                                           "max_output_tokens": 1500}).json()
        events = stream(srv.url, {"input": "Hi.", "max_output_tokens": 16})
        final = check_stream(events)
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert events[-2]["code"] == "queue_timeout"
        assert final["status"] == "failed" and final["error"]["code"] == "server_error"
        got = httpx.get(f"{srv.url}/v1/responses/{final['id']}").json()
        assert got["status"] == "failed"
        httpx.post(f"{srv.url}/v1/responses/{busy['id']}/cancel")
        time.sleep(3.5)  # --response-ttl
        assert httpx.get(f"{srv.url}/v1/responses/{final['id']}").status_code == 404
    finally:
        srv.stop()
