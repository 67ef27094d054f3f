"""The transport: half-close, pipelining, malformed requests, oversize bodies, disconnects,
slow readers, pings, overload and graceful shutdown — with real sockets and real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import time

import httpx
import pytest
from conftest import FerryServer
from rawhttp import connect, read_all, request_bytes, split_response
from reliability.common import rss_kib

CHAT = {"messages": [{"role": "user", "content": "Count from one to twenty."}], "max_tokens": 24,
        "temperature": 0}


def test_half_closed_client_receives_the_whole_stream(server):
    s = connect(server.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", {**CHAT, "stream": True}))
    s.shutdown(socket.SHUT_WR)
    status, headers, body = split_response(read_all(s))
    assert headers["content-type"].startswith("text/event-stream")
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]")
    assert body.count(b"data: ") >= 3


def test_half_closed_client_receives_the_whole_json_body(server):
    s = connect(server.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", CHAT))
    s.shutdown(socket.SHUT_WR)
    status, _, body = split_response(read_all(s))
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"]


def test_pipelined_requests_on_one_connection_are_all_answered(server):
    s = connect(server.url)
    s.sendall(request_bytes("GET", "/v1/models") + request_bytes("GET", "/health")
              + request_bytes("GET", "/v1/models", close=True))
    raw = read_all(s)
    assert raw.count(b"HTTP/1.1 200") == 3


def test_keep_alive_connection_serves_sequential_requests(server):
    with httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_malformed_request_line_gets_400_and_server_keeps_serving(server):
    s = connect(server.url)
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    assert read_all(s).startswith(b"HTTP/1.1 400")
    assert httpx.get(server.url + "/health").status_code == 200


def test_64_mib_body_gets_413_without_being_buffered(server):
    s = connect(server.url)
    size = 64 * 1024 * 1024
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n")
    s.sendall(b"{" + b" " * 65536)  # a little of the body, then wait for the answer
    s.settimeout(10)
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in head or b"payload_too_large" in s.recv(65536)
    s.close()


def test_chunked_oversize_body_gets_413(server):
    import select

    s = connect(server.url)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: application/json\r\n\r\n")
    chunk = b" " * (1024 * 1024)
    answer = b""
    for _ in range(40):  # up to 40 MiB, stopping as soon as the server answers
        if select.select([s], [], [], 0)[0]:
            answer = s.recv(65536)
            break
        try:
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            break
    if not answer:
        s.settimeout(20)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def running(server) -> int:
    h = httpx.get(server.url + "/health").json()
    return sum(m["running"] + m["waiting"] for m in h["models"].values())


@pytest.fixture(scope="module")
def big_ctx_server():
    s = FerryServer("--parallel", "8", "--ctx-size", str(8 * 4200))
    yield s
    s.stop()


def test_dropped_streams_leave_no_sequence_running_within_a_second(big_ctx_server):
    server = big_ctx_server
    socks = []
    for i in range(8):
        s = connect(server.url)
        body = {"messages": [{"role": "user", "content": f"Story {i}"}], "max_tokens": 4000,
                "ignore_eos": True, "stream": True}
        s.sendall(request_bytes("POST", "/v1/chat/completions", body))
        socks.append(s)
    for s in socks:  # a few tokens each
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(65536)
            assert chunk and b" 200 " in (got + chunk)[:20], got + chunk
            got += chunk
    assert running(server) == 8
    for s in socks:
        s.close()
    deadline = time.monotonic() + 1.0
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(server) == 0


def test_non_streaming_request_is_cancelled_when_client_leaves(server):
    s = connect(server.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions",
                            {**CHAT, "max_tokens": 1500, "ignore_eos": True}))
    deadline = time.monotonic() + 10
    while running(server) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running(server) == 1
    # A FIN alone cannot be told apart from a half-close (the client may still be reading), so
    # a non-streaming client is known to be gone when it resets the connection.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    deadline = time.monotonic() + 1.0
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(server) == 0


def test_slow_reader_does_not_block_others_and_is_ended_by_send_timeout():
    srv = FerryServer("--parallel", "4", "--send-timeout", "2")
    try:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(request_bytes("POST", "/v1/completions",
                                      {"prompt": "x", "max_tokens": 1900, "ignore_eos": True,
                                       "stream": True, "logprobs": 20}))
        rss0 = rss_kib(srv.proc.pid)
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/v1/completions", timeout=60,
                       json={"prompt": "Hello", "max_tokens": 64, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 64
        other = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while running(srv) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running(srv) == 0, "the stalled stream was ended"
        growth_mib = (rss_kib(srv.proc.pid) - rss0) / 1024
        print(f"other request took {other:.2f}s; RSS growth {growth_mib:.1f} MiB")
        assert growth_mib < 64
        assert other < 30
        stalled.close()
    finally:
        srv.stop()


def test_queued_stream_gets_pings_and_the_openai_client_still_parses_it():
    import openai

    srv = FerryServer("--parallel", "1", "--sse-ping-interval", "0.2")
    try:
        blocker = connect(srv.url)
        blocker.sendall(request_bytes("POST", "/v1/completions",
                                      {"prompt": "x", "max_tokens": 300, "ignore_eos": True}))
        time.sleep(0.3)
        s = connect(srv.url)
        s.sendall(request_bytes("POST", "/v1/chat/completions", {**CHAT, "stream": True}))
        first = s.recv(65536)
        assert b"200" in first.split(b"\r\n")[0], "headers are sent at once, while queued"
        data = first
        while b": ping" not in data:
            data += s.recv(65536)
        s.close()
        blocker.sendall(request_bytes("POST", "/v1/completions",
                                      {"prompt": "x", "max_tokens": 300, "ignore_eos": True}))
        time.sleep(0.3)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x",
                               _strict_response_validation=True, max_retries=0)
        chunks = list(client.chat.completions.create(model="default", stream=True, **CHAT))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        blocker.close()
    finally:
        srv.stop()


def test_queued_completion_stream_gets_its_headers_before_its_first_token_with_gzip():
    """A client that accepts gzip (httpx and the openai client do) still gets a queued
    stream's 200 at once: no middleware holds the headers until the first token."""
    srv = FerryServer("--parallel", "1")
    try:
        blocker = connect(srv.url)
        blocker.sendall(request_bytes("POST", "/v1/completions",
                                      {"prompt": "x", "max_tokens": 1500, "ignore_eos": True}))
        deadline = time.monotonic() + 30
        while running(srv) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        s = connect(srv.url, timeout=20)  # far less than the blocker's 1500 tokens take
        s.sendall(request_bytes("POST", "/v1/completions",
                                {"prompt": "Hi", "max_tokens": 4, "stream": True},
                                headers={"Accept-Encoding": "gzip"}))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        status_line, _, rest = head.partition(b"\r\n")
        fields, _, body = rest.partition(b"\r\n\r\n")
        assert b" 200 " in status_line
        assert b"content-type: text/event-stream" in fields.lower()
        assert b"content-encoding" not in fields.lower()
        assert b"data:" not in body
        h = httpx.get(srv.url + "/health").json()["models"]
        assert sum(m["waiting"] for m in h.values()) == 1, "the stream was still queued"
        s.close()
        blocker.close()
    finally:
        srv.stop()


def test_fifth_request_over_parallel_2_queue_2_gets_429_and_admitted_complete():
    srv = FerryServer("--parallel", "2", "--max-queue", "2")
    try:
        async def go():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
                body = {"prompt": "Hi", "max_tokens": 200, "ignore_eos": True}
                first = [asyncio.create_task(c.post("/v1/completions", json=body))
                         for _ in range(4)]
                await asyncio.sleep(0.5)
                fifth = await c.post("/v1/completions", json=body)
                return fifth, await asyncio.gather(*first)

        fifth, admitted = asyncio.run(go())
        assert fifth.status_code == 429
        assert fifth.headers["retry-after"]
        assert fifth.json()["error"]["type"] == "rate_limit_error"
        assert [r.status_code for r in admitted] == [200] * 4
        assert all(r.json()["usage"]["completion_tokens"] == 200 for r in admitted)
    finally:
        srv.stop()


def test_sigterm_lets_the_in_flight_stream_finish_then_exits_0():
    srv = FerryServer()
    s = connect(srv.url)
    s.sendall(request_bytes("POST", "/v1/completions",
                            {"prompt": "x", "max_tokens": 150, "ignore_eos": True,
                             "stream": True}))
    assert b"data: " in s.recv(65536) or b"data: " in s.recv(65536)
    srv.proc.send_signal(signal.SIGTERM)
    rest = read_all(s)
    assert b"data: [DONE]" in rest and rest.endswith(b"0\r\n\r\n"), rest[-200:]
    assert srv.proc.wait(30) == 0
    srv.stop()


def test_slowloris_connections_are_closed_after_the_header_timeout():
    srv = FerryServer("--header-timeout", "1")
    try:
        silent = connect(srv.url)
        trickle = connect(srv.url)
        trickle.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        t0 = time.monotonic()
        for _ in range(4):  # keep trickling header bytes for longer than the timeout
            time.sleep(0.5)
            try:
                trickle.sendall(b"a")
            except OSError:
                break
        for s in (silent, trickle):
            s.settimeout(5)
            try:
                assert s.recv(65536) == b"", "closed without an answer"
            except ConnectionResetError:
                pass
        assert time.monotonic() - t0 < 5
        # a request that sends its head in time is unaffected, also on a kept-alive connection
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/v1/models").status_code == 200
            time.sleep(1.5)
            assert c.get("/v1/models").status_code == 200
    finally:
        srv.stop()
