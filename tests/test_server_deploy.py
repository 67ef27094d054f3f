"""Deployment basics of ``ferry serve``: HTTPS with a certificate made here, --max-connections
(a fast 503 in the OpenAI envelope beyond the limit, the admitted connections served), the
start-up line, JSON log lines, and /v1/streams/lookup in llama-server's shape."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FerryServer

MSG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return crt, key


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


class HttpsServer(FerryServer):
    ca: Path

    def wait_ready(self, timeout: float = 120) -> None:
        self.url = self.url.replace("http://", "https://")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            try:
                if httpx.get(self.url + "/health", verify=trusting(self.ca),
                             timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log()[-3000:])


def test_https_serves_the_api_with_a_self_signed_certificate(cert):
    crt, key = cert
    HttpsServer.ca = crt
    s = HttpsServer("--ssl-certfile", str(crt), "--ssl-keyfile", str(key))
    try:
        with httpx.Client(verify=trusting(crt), timeout=120) as http:
            client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0,
                                   _strict_response_validation=True, http_client=http)
            r = client.chat.completions.create(model="default", messages=MSG, max_tokens=4)
            assert r.choices[0].message.content is not None
        with pytest.raises(httpx.HTTPError):  # the port speaks TLS only
            httpx.get(s.url.replace("https://", "http://") + "/health", timeout=5)
        with pytest.raises(httpx.ConnectError):  # and the certificate is checked
            httpx.get(s.url + "/health", timeout=5)
    finally:
        s.stop()
    line = next(x for x in s.log().splitlines() if "Ferry ready at" in x)
    assert f"Ferry ready at {s.url}/v1 | model SmolLM2-135M-Instruct.Q4_1 (" in line
    assert "| backend cpu | chat UI " + s.url + "/" in line


@pytest.fixture(scope="module")
def limited():
    s = FerryServer("--max-connections", "4", "--parallel", "4")
    yield s
    s.stop()


def stream(url: str, out: list, i: int, start: threading.Barrier) -> None:
    body = {"messages": MSG, "max_tokens": 400, "ignore_eos": True, "stream": True}
    start.wait()
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/v1/chat/completions",
                                                  json=body) as r:
        raw = r.read()
        out.append((i, r.status_code, time.monotonic(), r.headers, raw))


def test_over_max_connections_is_a_fast_503_and_the_admitted_four_are_served(limited):
    results: list = []
    start = threading.Barrier(8)
    threads = [threading.Thread(target=stream, args=(limited.url, results, i, start))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 8
    served = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] != 200]
    assert len(served) == 4 and len(refused) == 4, [r[1] for r in results]
    for _, status, _, headers, raw in refused:
        assert status == 503 and headers["retry-after"] == "1"
        err = json.loads(raw)["error"]
        assert err["code"] == "too_many_connections" and err["type"] and "message" in err
    for *_, raw in served:
        assert raw.rstrip().endswith(b"data: [DONE]")
    # never a hang: every refusal came while the admitted streams were still generating
    assert max(r[2] for r in refused) < min(r[2] for r in served)
    assert limited.log().count("(--max-connections)") >= 4


def until_admitted(c: httpx.Client) -> httpx.Response:
    """GET /v1/models, again while the server has not yet seen an earlier test's closes."""
    deadline = time.monotonic() + 30
    while (r := c.get("/v1/models")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    return r


def test_the_limit_counts_open_connections_and_frees_on_close(limited):
    clients = [httpx.Client(base_url=limited.url, timeout=60) for _ in range(4)]
    try:
        for c in clients:  # four idle keep-alive connections hold the four places
            assert until_admitted(c).status_code == 200
        with httpx.Client(base_url=limited.url, timeout=60) as extra:
            r = extra.get("/v1/models")
            assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
        for c in clients:  # the admitted connections keep being served
            assert c.get("/v1/models").status_code == 200
        clients.pop().close()
        with httpx.Client(base_url=limited.url, timeout=60) as extra:
            assert until_admitted(extra).status_code == 200  # the closed one's place
    finally:
        for c in clients:
            c.close()


@pytest.fixture(scope="module")
def json_logs():
    s = FerryServer("--log-format", "json", "--streams-lookup-format", "llama-server")
    yield s
    s.stop()


def test_json_log_lines_parse_and_carry_the_request(json_logs):
    r = httpx.post(json_logs.url + "/v1/chat/completions", timeout=60,
                   headers={"X-Request-Id": "req-json-1"},
                   json={"messages": MSG, "max_tokens": 4})
    assert r.status_code == 200
    time.sleep(0.2)
    lines = [x for x in json_logs.log().splitlines() if x.strip()]
    docs = [json.loads(x) for x in lines]  # every line is one JSON object
    access = [d for d in docs if d.get("request_id") == "req-json-1"]
    assert len(access) == 1
    assert access[0] | {"method": "POST", "path": "/v1/chat/completions", "status": 200} == \
        access[0]
    assert access[0]["duration_ms"] > 0 and access[0]["level"] == "info" and access[0]["time"]
    assert any(d["message"].startswith("Ferry ready at http://") for d in docs)


def lookup(url: str, ids: list[str], **params: str) -> httpx.Response:
    return httpx.post(url + "/v1/streams/lookup", params=params, timeout=30,
                      json={"conversation_ids": ids})


def test_lookup_answers_in_llama_server_shape_with_the_flag_or_on_request(json_logs, server):
    body = {"messages": MSG, "max_tokens": 4, "stream": True}
    for s in (json_logs, server):
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60,
                       headers={"X-Conversation-Id": "shape-1"})
        assert r.status_code == 200
    llama = lookup(json_logs.url, ["shape-1", "unknown"]).json()  # --streams-lookup-format
    assert isinstance(llama, list) and len(llama) == 1
    entry = llama[0]
    assert set(entry) == {"conversation_id", "is_done", "total_bytes", "started_at",
                          "completed_at"}
    assert entry["conversation_id"] == "shape-1" and entry["is_done"] is True
    assert isinstance(entry["started_at"], int) and isinstance(entry["completed_at"], int)
    assert entry["completed_at"] >= entry["started_at"] > 0 and entry["total_bytes"] > 0
    ferry = lookup(json_logs.url, ["shape-1"], format="ferry").json()
    assert ferry["object"] == "list" and ferry["data"][0]["total_bytes"] == entry["total_bytes"]
    # the default server answers in Ferry's shape unless the request asks for llama-server's
    assert lookup(server.url, ["shape-1"]).json()["object"] == "list"
    assert isinstance(lookup(server.url, ["shape-1"], format="llama-server").json(), list)
    bad = lookup(server.url, ["shape-1"], format="ollama")
    assert bad.status_code == 400 and bad.json()["error"]["param"]
