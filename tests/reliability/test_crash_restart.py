"""Crash and restart: two replicas share a real redis-server. A replica is SIGKILLed in the middle
of a resumable stream; a client resuming on the other replica gets every byte stored before the
kill and then a clear terminal error event within a bounded time (never a hang). The killed
replica starts again on the same Redis with no manual cleanup and serves resumable streams."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from conftest import FerryServer, free_port, start_redis, stop_redis
from rawhttp import stream_prefix

from .common import SCALES, sizes, summary

BODY = {"messages": [{"role": "user", "content": "Tell me a long story about rivers."}],
        "max_tokens": 1500, "ignore_eos": True, "stream": True}
END_WITHIN_S = 30.0  # heartbeat lease + one follower wait, with margin


def read_body_prefix(url: str, conv: str, n: int) -> tuple[bytes, object]:
    """Start a resumable stream; return at least ``n`` body bytes and the still-open socket."""
    return stream_prefix(url, BODY, n, headers={"X-Conversation-Id": conv})


def resume(url: str, conv: str, offset: int) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    with httpx.stream("GET", f"{url}/v1/stream/{conv}", params={"from": offset},
                      timeout=httpx.Timeout(10, read=END_WITHIN_S + 30)) as r:
        data = r.read()
    return r.status_code, data, time.monotonic() - t0


def last_data(stream: bytes) -> str:
    events = [b for b in stream.split(b"\n\n") if b.strip() and not b.startswith(b":")]
    lines = [ln for ln in events[-1].split(b"\n") if ln.startswith(b"data: ")]
    return b"\n".join(ln[6:] for ln in lines).decode()


@pytest.mark.parametrize("scale", SCALES)
def test_follower_of_a_killed_replica_gets_all_bytes_then_an_error_and_restart_is_clean(
        scale, tmp_path):
    rounds = sizes(scale)["crash_rounds"]
    rport = free_port()
    redis = start_redis(rport, str(tmp_path))
    url = f"redis://127.0.0.1:{rport}/0"
    b = FerryServer("--stream-store", url)
    servers = [b]
    lost = ends = 0
    waits = []
    try:
        for rnd in range(rounds):
            a = FerryServer("--stream-store", url)
            servers.append(a)
            conv = f"crash-{rnd}"
            prefix, sock = read_body_prefix(a.url, conv, 800 + 400 * rnd)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            sock.close()
            status, whole, waited = resume(b.url, conv, 0)
            assert status == 200
            lost += 0 if whole.startswith(prefix) else len(prefix)
            tail = last_data(whole)
            waits.append(waited)
            assert whole.startswith(prefix), "every byte read before the kill is replayed"
            assert tail != "[DONE]"
            err = json.loads(tail)["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "service_unavailable"
            assert waited < END_WITHIN_S
            # the error event is stored: a client resuming mid-way gets the same tail, at once
            status, rest, again = resume(b.url, conv, len(prefix))
            assert status == 200 and prefix + rest == whole
            assert again < 3.0, "a replay of the ended session does not wait for liveness"
            info = httpx.post(b.url + "/v1/streams/lookup",
                              json={"conversation_ids": [conv]}).json()["data"][0]
            assert info["is_done"] and info["total_bytes"] == len(whole)
            ends += 1
            # restart the killed replica on the same Redis: no cleanup, resumable streams work
            a2 = FerryServer("--stream-store", url)
            servers.append(a2)
            small = {**BODY, "max_tokens": 20}
            for cid in (conv, f"fresh-{rnd}"):
                r = httpx.post(a2.url + "/v1/chat/completions", json=small, timeout=60,
                               headers={"X-Conversation-Id": cid})
                assert r.status_code == 200 and r.content.rstrip().endswith(b"data: [DONE]")
                assert resume(b.url, cid, 0)[1] == r.content
            a2.stop()
        summary("crash_restart", scale=scale, kills=rounds, followers_ended=ends,
                bytes_lost=lost, max_follower_end_s=max(waits), restarts_ok=rounds)
    finally:
        for s in servers:
            s.stop()
        stop_redis(redis)
