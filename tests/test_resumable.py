"""Resumable streams end to end: real servers, real sockets, memory and Redis stores."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from conftest import FerryServer
from httpx_sse import EventSource
from rawhttp import connect, request_bytes, stream_prefix

BODY = {"messages": [{"role": "user", "content": "Tell me about rivers."}], "max_tokens": 60,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module", params=["memory", "redis"])
def rserver(request):
    store = "memory" if request.param == "memory" else request.getfixturevalue("redis_url")
    s = FerryServer("--stream-store", store)
    yield s
    s.stop()


def start(server: FerryServer, conv: str, body: dict = BODY, headers: dict | None = None,
          ) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"X-Conversation-Id": conv, **(headers or {})})


def session_bytes(server: FerryServer, conv: str, offset: int | None = 0, headers=None) -> bytes:
    params = {} if offset is None else {"from": offset}
    r = httpx.get(f"{server.url}/v1/stream/{conv}", params=params, timeout=60,
                  headers=headers or {})
    assert r.status_code == 200, r.text
    return r.content


def read_prefix(server: FerryServer, conv: str, n: int) -> bytes:
    """Start a resumable stream on a raw socket, read ``n`` body bytes (all of them when the stream
    is shorter), drop the connection."""
    body, s = stream_prefix(server.url, BODY, n, headers={"X-Conversation-Id": conv})
    s.close()
    return body[:n]


def test_prefix_plus_replay_from_offset_is_the_whole_session(rserver):
    whole_conv = f"whole-{random.random()}"
    full = start(rserver, whole_conv).content
    assert full.rstrip().endswith(b"data: [DONE]")
    assert session_bytes(rserver, whole_conv) == full
    rng = random.Random(7)
    for i in range(6):
        conv = f"cut-{i}-{rng.random()}"
        # sampled at temperature 1, this stream's length differs from ``full``'s: cut inside it
        prefix = read_prefix(rserver, conv, rng.randint(1, len(full) - 1))
        cut = len(prefix)
        rest = session_bytes(rserver, conv, cut)
        whole = session_bytes(rserver, conv, 0)
        assert prefix + rest == whole, f"cut at {cut}"
        assert whole.rstrip().endswith(b"data: [DONE]")
        # Last-Event-ID: resume after the last complete event the client saw
        ids = [int(line[4:]) for line in prefix.split(b"\n") if line.startswith(b"id: ")]
        if ids:
            after = session_bytes(rserver, conv, None, headers={"Last-Event-ID": str(ids[-1])})
            start_of_next = whole.index(b"\n\n", ids[-1]) + 2
            assert after == whole[start_of_next:]


def test_every_event_carries_an_id_equal_to_its_offset(rserver):
    conv = f"ids-{random.random()}"
    data = start(rserver, conv).content
    pos = 0
    for block in data.split(b"\n\n")[:-1]:
        if not block.startswith(b":"):
            assert block.startswith(b"id: %d\n" % pos), block[:40]
        pos += len(block) + 2


def test_generation_runs_to_completion_after_the_client_disconnects(rserver):
    conv = f"gone-{random.random()}"
    read_prefix(rserver, conv, 50)
    deadline = time.monotonic() + 60
    while True:
        info = httpx.post(rserver.url + "/v1/streams/lookup",
                          json={"conversation_ids": [conv]}).json()["data"][0]
        if info["is_done"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["is_done"] and info["completed_at"] >= info["started_at"]
    events = [e.data for e in EventSource(httpx.get(f"{rserver.url}/v1/stream/{conv}")).iter_sse()]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == BODY["max_tokens"]
    assert info["total_bytes"] == len(session_bytes(rserver, conv))


def test_unknown_id_is_404_and_bad_id_is_400(rserver):
    r = httpx.get(rserver.url + "/v1/stream/nope-never")
    assert r.status_code == 404 and r.json()["error"]["code"]
    r = httpx.get(rserver.url + "/v1/stream", params={"conv_id": "nope/never"})
    assert r.status_code == 404
    r = start(rserver, "bad id!")
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Conversation-Id"
    r = start(rserver, "x" * 129)
    assert r.status_code == 400


def test_lookup_returns_only_known_ids_among_those_asked(rserver):
    a, b = f"la-{random.random()}", f"lb-{random.random()}"
    start(rserver, a)
    start(rserver, b)
    data = httpx.post(rserver.url + "/v1/streams/lookup",
                      json={"conversation_ids": [a, "unknown-1"]}).json()["data"]
    assert [d["conversation_id"] for d in data] == [a]
    assert set(data[0]) == {"conversation_id", "is_done", "total_bytes", "started_at",
                            "completed_at"}


def test_second_post_with_same_id_replaces_the_first(rserver):
    conv = f"re-{random.random()}"
    long = {**BODY, "max_tokens": 1500}
    s = connect(rserver.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", long,
                            headers={"X-Conversation-Id": conv}))
    s.recv(65536)
    second = start(rserver, conv, {**BODY, "max_tokens": 5}).content
    assert second.rstrip().endswith(b"data: [DONE]")
    assert session_bytes(rserver, conv) == second
    first = read_rest(s)
    assert b"[DONE]" not in first, "the replaced generation was cancelled"
    h = httpx.get(rserver.url + "/health").json()
    assert sum(m["running"] for m in h["models"].values()) == 0


def read_rest(s) -> bytes:
    s.settimeout(30)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_delete_stops_the_generation_and_is_idempotent(rserver):
    conv = f"del-{random.random()}"
    s = connect(rserver.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", {**BODY, "max_tokens": 1500},
                            headers={"X-Conversation-Id": conv}))
    s.recv(65536)
    assert httpx.delete(f"{rserver.url}/v1/stream/{conv}").status_code == 204
    assert httpx.delete(f"{rserver.url}/v1/stream", params={"conv_id": conv}).status_code == 204
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        h = httpx.get(rserver.url + "/health").json()
        if sum(m["running"] for m in h["models"].values()) == 0:
            break
        time.sleep(0.05)
    assert sum(m["running"] for m in h["models"].values()) == 0
    assert httpx.get(f"{rserver.url}/v1/stream/{conv}").status_code == 404
    s.close()


def test_lost_offset_is_400_and_ttl_expires():
    srv = FerryServer("--stream-buffer-bytes", "2048", "--stream-ttl", "1")
    try:
        conv = "tiny"
        full = start(srv, conv).content
        assert len(full) > 4096
        r = httpx.get(f"{srv.url}/v1/stream/{conv}", params={"from": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "from"
        assert "dropped" in r.json()["error"]["message"] or r.json()["error"]["message"]
        tail = session_bytes(srv, conv, len(full) - 100)
        assert tail == full[-100:]
        time.sleep(1.5)
        assert httpx.get(f"{srv.url}/v1/stream/{conv}").status_code == 404
    finally:
        srv.stop()


def test_sessions_belong_to_the_key_that_created_them():
    srv = FerryServer("--api-key", "alice", "--api-key", "bob")
    try:
        a = {"Authorization": "Bearer alice"}
        b = {"Authorization": "Bearer bob"}
        start(srv, "mine", headers=a)
        assert httpx.get(f"{srv.url}/v1/stream/mine", headers=a).status_code == 200
        assert httpx.get(f"{srv.url}/v1/stream/mine", headers=b).status_code == 404
        assert httpx.post(srv.url + "/v1/streams/lookup", json={"conversation_ids": ["mine"]},
                          headers=b).json()["data"] == []
        assert httpx.delete(f"{srv.url}/v1/stream/mine", headers=b).status_code == 204
        assert httpx.get(f"{srv.url}/v1/stream/mine", headers=a).status_code == 200
        assert httpx.get(f"{srv.url}/v1/stream/mine").status_code == 401
    finally:
        srv.stop()


def test_plain_requests_keep_working_when_redis_is_gone():
    from conftest import free_port

    srv = FerryServer("--stream-store", f"redis://127.0.0.1:{free_port()}/0")
    try:
        r = start(srv, "needs-redis")
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        r = httpx.post(srv.url + "/v1/chat/completions", json=BODY, timeout=60)
        assert r.status_code == 200 and r.content.rstrip().endswith(b"data: [DONE]")
    finally:
        srv.stop()


def test_a_stream_started_on_one_replica_resumes_and_stops_on_another(redis_url):
    a = FerryServer("--stream-store", redis_url)
    b = FerryServer("--stream-store", redis_url)
    try:
        conv = f"x-{random.random()}"
        prefix = read_prefix(a, conv, 300)
        with httpx.stream("GET", f"{b.url}/v1/stream/{conv}", params={"from": len(prefix)},
                          timeout=60) as r:
            rest = r.read()
        assert (prefix + rest) == session_bytes(a, conv)
        assert rest.rstrip().endswith(b"data: [DONE]")
        # DELETE on B stops the generation running on A within a second
        conv2 = f"y-{random.random()}"
        s = connect(a.url)
        s.sendall(request_bytes("POST", "/v1/chat/completions", {**BODY, "max_tokens": 1500},
                                headers={"X-Conversation-Id": conv2}))
        s.recv(65536)
        t0 = time.monotonic()
        assert httpx.delete(f"{b.url}/v1/stream/{conv2}").status_code == 204
        while time.monotonic() - t0 < 1.0:
            h = httpx.get(a.url + "/health").json()
            if sum(m["running"] for m in h["models"].values()) == 0:
                break
            time.sleep(0.05)
        assert sum(m["running"] for m in h["models"].values()) == 0, "stopped within 1 s"
        s.close()
    finally:
        a.stop()
        b.stop()
