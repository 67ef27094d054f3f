"""Ferry on Ray Serve, end to end: one local Ray instance for the module (``ferry serve --ray``,
2 engine replicas of the bundled model with 1 thread each, a real redis-server), plus a second
front door attached to it in another process (``--front-door-only --ray-routing random``).
The single server's guarantees must hold through the deployment."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import socket
import struct
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FerryServer
from rawhttp import connect, read_all, request_bytes, split_response, stream_prefix

pytestmark = pytest.mark.timeout(600)

CHAT = {"messages": [{"role": "user", "content": "Count from one to twenty."}], "max_tokens": 24,
        "temperature": 0}
LONG = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 1500,
        "ignore_eos": True, "stream": True}


class RayFerry(FerryServer):
    def wait_ready(self, timeout: float = 300) -> None:
        """Ray start-up plus two model loads: until /health lists both replicas answering."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited: {self.log()[-3000:]}")
            try:
                last = httpx.get(self.url + "/health", timeout=30)
                if len(self.replicas(last)) == 2:
                    return
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"not ready: {last!r} {getattr(last, 'text', '')} {self.log()[-3000:]}")

    def replicas(self, r: httpx.Response | None = None) -> list[dict]:
        r = r or httpx.get(self.url + "/health", timeout=30)
        return [x for x in r.json().get("replicas", []) if "error" not in x] if r.is_success else []

    def running(self) -> int:
        return sum(m["running"] + m["waiting"] for r in self.replicas()
                   for m in r["models"].values())

    def freed_within(self, seconds: float) -> bool:
        """Whether a /health asked within ``seconds`` from now finds no sequence left (on a
        busy machine one /health, which asks every replica through Ray, takes ~0.2-0.5 s)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.running() == 0:
                return True
            time.sleep(0.05)
        return False


def ray_processes(driver: int) -> set[int]:
    """The processes of the Ray instance that process ``driver`` started: those named with its
    session directory (``session_<date>_<driver pid>``) and their descendants."""
    cmds, parents = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmds[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    mine = {p for p, c in cmds.items() if f"_{driver}/".encode() in c and b"/ray/session_" in c}
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in mine} - mine
        grew, mine = bool(more), mine | more
    return mine


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()
            and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}


@pytest.fixture(scope="module")
def deployment(redis_url):
    common = ("--threads", "1", "--parallel", "2", "--max-queue", "2", "--stream-store", redis_url,
              "--sse-ping-interval", "1")
    a = RayFerry("--ray", "--replicas", "2", "--replica-cpus", "0.5", *common)
    try:  # the address of a's own Ray instance: "auto" could find another one on this machine
        deadline = time.monotonic() + 60
        while not (found := re.search(r"Ray cluster at (\S+)\)", a.log())):
            assert time.monotonic() < deadline, a.log()[-2000:]
            time.sleep(0.2)
        address = found.group(1)
        b = RayFerry("--front-door-only", "--ray-address", address, "--ray-routing", "random",
                     *common, env={"RAY_AUTH_MODE": "token"})  # a's instance requires its token
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture(scope="module")
def front(deployment) -> RayFerry:
    return deployment[0]


def strict_client(server: FerryServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                         _strict_response_validation=True, timeout=120)


def test_strict_openai_client_chat_and_completions_stream_and_not(front):
    c = strict_client(front)
    r = c.chat.completions.create(model="default", messages=CHAT["messages"], max_tokens=8)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model="default", messages=CHAT["messages"],
                                            max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert 0 < chunks[-1].usage.completion_tokens <= 8
    t = c.completions.create(model="default", prompt="The capital of France is", max_tokens=4)
    assert t.choices[0].text
    # streamed text completions carry `finish_reason: null`, which the SDK's strict mode
    # refuses (as on the single server, test_api_completions): read them in default mode
    lax = openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0)
    parts = list(lax.completions.create(model="default", prompt="One, two,", max_tokens=4,
                                        stream=True))
    assert "".join(p.choices[0].text for p in parts)
    assert parts[-1].choices[0].finish_reason in ("stop", "length")


def test_half_closed_client_receives_the_whole_stream(front):
    s = connect(front.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", {**CHAT, "stream": True}))
    s.shutdown(socket.SHUT_WR)
    status, headers, body = split_response(read_all(s))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-ferry-replica"]
    assert body.rstrip().endswith(b"data: [DONE]") and body.count(b"data: ") >= 3


def test_errors_keep_the_single_servers_status_and_envelope(front):
    url = front.url + "/v1/chat/completions"
    bad = httpx.post(url, json={**CHAT, "temperature": 9})  # refused by the front door
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    long = httpx.post(url, json={**CHAT, "max_tokens": 10**6})  # refused by a replica
    assert long.status_code == 400
    assert long.json()["error"]["code"] == "context_length_exceeded"
    unknown = httpx.post(url, json={**CHAT, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    huge = httpx.post(url, content=b"x" * (17 * 1024 * 1024),
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"


def test_full_replicas_answer_429_and_admitted_streams_complete(front):
    # 2 replicas x (2 slots + 2 queued): by the ninth concurrent request one engine is full
    socks, over = [], None
    for i in range(14):
        s = connect(front.url)
        body = {**LONG, "max_tokens": 40, "messages": [{"role": "user", "content": f"Tale {i}"}]}
        s.sendall(request_bytes("POST", "/v1/chat/completions", body, close=True))
        head = s.recv(12)
        if b" 429" in head:
            over = split_response(head + read_all(s))
            break
        socks.append((s, head))
    assert over is not None and len(socks) >= 8, len(socks)
    status, headers, body = over
    assert json.loads(body)["error"]["type"] == "rate_limit_error" and "retry-after" in headers
    for s, head in socks:
        status, _, body = split_response(head + read_all(s))
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]")


def test_dropped_streams_free_the_replicas_sequences_within_a_second(front):
    socks = []
    for i in range(4):
        body = {**LONG, "messages": [{"role": "user", "content": f"Story {i}"}]}
        _, s = stream_prefix(front.url, body, 200)
        socks.append(s)
    assert front.running() == 4
    for s in socks:
        s.close()
    assert front.freed_within(1.0)


def test_non_streaming_request_is_cancelled_when_client_leaves(front):
    s = connect(front.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions",
                            {**CHAT, "max_tokens": 1500, "ignore_eos": True}))
    deadline = time.monotonic() + 30
    while front.running() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert front.running() == 1
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert front.freed_within(1.0)


def _replay(server: FerryServer, conv: str, offset: int = 0) -> bytes:
    r = httpx.get(f"{server.url}/v1/stream/{conv}", params={"from": offset}, timeout=120)
    assert r.status_code == 200, r.text
    return r.content


def test_resumable_stream_resumes_through_the_other_front_door_and_stops_on_delete(deployment):
    a, b = deployment
    conv = f"resume-{random.random()}"
    body = {**LONG, "max_tokens": 60}
    prefix, s = stream_prefix(a.url, body, 300, headers={"X-Conversation-Id": conv})
    s.close()
    rest = _replay(b, conv, len(prefix))
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert prefix + rest == _replay(a, conv)
    # a DELETE through B stops the generation that A's request started, within a second
    conv2 = f"delete-{random.random()}"
    _, s = stream_prefix(a.url, LONG, 200, headers={"X-Conversation-Id": conv2})
    assert a.running() == 1
    assert httpx.delete(f"{b.url}/v1/stream/{conv2}").status_code == 204
    assert a.freed_within(1.0)
    s.close()


def _conversation(server: FerryServer, name: str, turns: int, headers: dict) -> list[tuple]:
    """(replica, prompt_tokens, cached_tokens) of each turn of a growing conversation."""
    doc = f"{name}: " + " ".join(random.choice(["river", "stone", "light", "field", "north"])
                                 for _ in range(120))
    messages = [{"role": "user", "content": f"Read this and answer briefly.\n{doc}\nWhat is it?"}]
    out = []
    for turn in range(turns):
        r = httpx.post(server.url + "/v1/chat/completions", headers=headers, timeout=120,
                       json={"messages": messages, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        out.append((r.headers["x-ferry-replica"], usage["prompt_tokens"],
                    usage["prompt_tokens_details"]["cached_tokens"]))
        messages += [r.json()["choices"][0]["message"],
                     {"role": "user", "content": f"And question {turn + 2}?"}]
    return out


def test_a_conversation_stays_on_its_replica_and_random_routing_would_not(deployment):
    a, b = deployment
    sticky = _conversation(a, "conv-a", 4, {"X-Conversation-Id": f"c-{random.random()}"})
    by_prefix = _conversation(a, "prefix-b", 4, {})  # no id: the longest cached prefix decides
    for turns in (sticky, by_prefix):
        assert len({replica for replica, _, _ in turns}) == 1, turns
        for (_, prev_prompt, _), (_, _, cached) in itertools.pairwise(turns):
            assert cached >= prev_prompt - 4 > 0, turns  # the whole previous prompt was reused
    # the same through a front door that routes at random: turns move, history is recomputed
    shuffled = [_conversation(b, f"random-{i}", 4, {"X-Conversation-Id": f"r-{i}-{random.random()}"})
                for i in range(4)]
    moved = [t for t in shuffled if len({replica for replica, _, _ in t}) > 1]
    assert moved, shuffled  # all four staying put by chance: p = (1/8)^4
    assert any(cached < prev - 4 for t in moved for (_, prev, _), (_, _, cached) in itertools.pairwise(t))


def test_responses_chain_on_one_replica_and_background_resumes_through_the_other_door(deployment):
    a, b = deployment
    doc = " ".join(random.choice(["river", "stone", "light", "field"]) for _ in range(150))
    prev, served, cached = None, [], []
    for q in [f"Read: {doc}. Summarise.", "Shorter?", "One word?"]:
        r = httpx.post(a.url + "/v1/responses", timeout=120, json={
            "input": q, "max_output_tokens": 16, "temperature": 0, "previous_response_id": prev})
        assert r.status_code == 200, r.text
        served.append(r.headers["x-ferry-replica"])
        cached.append(r.json()["usage"]["input_tokens_details"]["cached_tokens"])
        prev = r.json()["id"]
    assert len(set(served)) == 1, served
    assert all(c > 100 for c in cached[1:]), cached
    r = httpx.post(a.url + "/v1/responses", timeout=120, json={
        "input": "Tell a story.", "max_output_tokens": 40, "background": True})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "in_progress"), r.text
    events = httpx.get(f"{b.url}/v1/responses/{r.json()['id']}", params={"stream": "true"},
                       timeout=120).text
    assert "event: response.incomplete" in events  # it ran to max_output_tokens
    got = httpx.get(f"{b.url}/v1/responses/{r.json()['id']}").json()
    assert got["status"] == "incomplete" and got["usage"]["output_tokens"] == 40


def start_resumable(server: FerryServer, body: dict, conv: str) -> str:
    """Start a resumable stream, drop the connection once the headers came; its replica."""
    s = connect(server.url)
    s.sendall(request_bytes("POST", "/v1/chat/completions", body,
                            headers={"X-Conversation-Id": conv}))
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    s.close()
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 200"), raw
    return head.split("x-ferry-replica:", 1)[1].split("\r\n", 1)[0].strip()


def test_a_killed_replica_ends_its_streams_with_an_error_and_is_replaced(deployment):
    a, b = deployment
    before = {r["id"]: r["pid"] for r in a.replicas()}
    assert len(before) == 2
    on: dict[str, str] = {}  # replica -> a resumable stream it generates
    for i in range(6):  # least loaded spreads them: stop once each replica has one
        conv = f"kill-{i}-{random.random()}"
        body = {**LONG, "max_tokens": 300, "messages": [{"role": "user", "content": f"Saga {i}"}]}
        on.setdefault(start_resumable(a, body, conv), conv)
        if len(on) == 2:
            break
    assert len(on) == 2, on
    victim, survivor = list(on)
    with httpx.Client(timeout=120) as c:
        os.kill(before[victim], signal.SIGKILL)
        dead = c.get(f"{b.url}/v1/stream/{on[victim]}").content
        alive = c.get(f"{b.url}/v1/stream/{on[survivor]}").content
    assert b'"code":"service_unavailable"' in dead.split(b"data: ")[-1], dead[-300:]
    assert alive.rstrip().endswith(b"data: [DONE]")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        now = {r["id"] for r in a.replicas()}
        if len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and victim not in now and survivor in now, now
    assert httpx.post(a.url + "/v1/chat/completions", json=CHAT, timeout=120).status_code == 200


def test_stopping_leaves_no_ray_process_behind(deployment):
    a, b = deployment
    started = ray_processes(a.proc.pid)
    assert len(started) >= 5, started  # GCS, raylet, controller, 2 engines, front door, ...
    assert b.stop() == 0 and a.stop() == 0
    deadline = time.monotonic() + 30
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive(started) == set()


def test_printed_config_is_a_valid_serve_config(redis_url):
    import subprocess
    import sys

    import yaml
    from ray.serve.schema import ServeDeploySchema

    out = subprocess.run([sys.executable, "-m", "ferry", "serve", "--print-ray-config",
                          "--replicas", "2", "--max-replicas", "4", "--stream-store", redis_url],
                         capture_output=True, text=True, check=True).stdout
    config = ServeDeploySchema.model_validate(yaml.safe_load(out))
    app = config.applications[0]
    assert app.import_path == "ferry.deploy.app:build"
    engine = {d.name: d for d in app.deployments}["EngineReplica"]
    assert engine.autoscaling_config["max_replicas"] == 4
    assert json.dumps(app.args)
