"""Several models in one real server: routing by `model`, lazy loading, LRU eviction with
--models-max-loaded, DELETE/load routes, --models-config, and /health per model."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import FerryServer
from openai_spec import validate

from ferry.engine.model import bundled_model_path

GGUF = bundled_model_path()
EMB = "all-minilm-l6-v2"
MSG = [{"role": "user", "content": "Count from one to fifty."}]


def chat(c: httpx.Client, model: str, max_tokens: int = 4) -> httpx.Response:
    return c.post("/v1/chat/completions", json={"model": model, "messages": MSG,
                                                "max_tokens": max_tokens})


def states(c: httpx.Client) -> dict[str, str]:
    return {m["id"]: m["state"] for m in c.get("/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("models") / "models.yaml"
    cfg.write_text(f"models:\n  - alias: small\n    path: {GGUF}\n    kind: chat\n"
                   f"    ctx_size: 1024\n    parallel: 2\n")
    s = FerryServer("--parallel", "2", "--model", f"chat-a={GGUF}", "--model", f"chat-b={GGUF}",
                    "--models-config", str(cfg))
    with httpx.Client(base_url=s.url, timeout=120) as c:
        yield c
    s.stop()


@pytest.fixture(scope="module")
def lru():
    s = FerryServer("--parallel", "2", "--model", f"chat-a={GGUF}", "--model", f"chat-b={GGUF}",
                    "--models-max-loaded", "1")
    with httpx.Client(base_url=s.url, timeout=120) as c:
        yield c
    s.stop()


def test_every_configured_model_is_listed_and_the_list_matches_the_spec(multi):
    body = multi.get("/v1/models").json()
    validate(body, "ListModelsResponse")
    kinds = {m["id"]: m["kind"] for m in body["data"]}
    assert kinds == {"chat-a": "chat", "chat-b": "chat", "small": "chat", EMB: "embedding",
                     "whisper-1": "transcription", "whisper-tiny.en": "transcription"}
    one = multi.get("/v1/models/chat-b").json()
    validate(one, "Model")
    assert one["id"] == "chat-b" and one["object"] == "model"


def test_default_model_is_loaded_at_start_and_the_others_on_first_use(multi):
    assert states(multi)["chat-a"] == "loaded"
    assert states(multi)["small"] == "unloaded"
    r = chat(multi, "small")
    assert r.status_code == 200 and r.json()["model"] == "small"
    assert states(multi)["small"] == "loaded"


def test_chat_aliases_and_the_embedding_model_serve_together(multi):
    a, b = chat(multi, "chat-a"), chat(multi, "chat-b")
    e = multi.post("/v1/embeddings", json={"model": EMB, "input": "hello"})
    assert (a.status_code, b.status_code, e.status_code) == (200, 200, 200)
    assert a.json()["model"] == "chat-a" and b.json()["model"] == "chat-b"
    loaded = {k for k, v in states(multi).items() if v == "loaded"}
    assert {"chat-a", "chat-b", EMB} <= loaded


def test_models_config_sets_context_and_parallelism(multi):
    chat(multi, "small")
    h = multi.get("/health").json()["models"]["small"]
    assert h["slots"] == 2 and h["n_ctx_seq"] == 512 and h["kv_pool_cells"] == 1024
    assert h["running"] == 0 and h["waiting"] == 0


def test_health_reports_every_model(multi):
    h = multi.get("/health")
    assert h.status_code == 200
    models = h.json()["models"]
    assert models["chat-a"]["kind"] == "chat" and "running" in models["chat-a"]
    assert models["whisper-1"]["kind"] == "transcription"
    assert models[EMB]["kind"] == "embedding"


def test_load_route_preloads(multi):
    r = multi.post("/v1/models/chat-b/load")
    assert r.status_code == 200 and r.json()["state"] == "loaded"
    validate(r.json(), "Model")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/models/gpt-9", None),
    ("DELETE", "/v1/models/gpt-9", None),
    ("POST", "/v1/models/gpt-9/load", None),
    ("POST", "/v1/chat/completions", {"model": "gpt-9", "messages": MSG}),
    ("POST", "/v1/completions", {"model": "gpt-9", "prompt": "x"}),
    ("POST", "/v1/embeddings", {"model": "gpt-9", "input": "x"}),
    ("POST", "/tokenize", {"model": "gpt-9", "content": "x"}),
])
def test_unknown_model_is_404_model_not_found(multi, method, path, body):
    r = multi.request(method, path, json=body)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"


def test_embedding_model_on_chat_is_400(multi):
    r = chat(multi, EMB)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_delete_waits_for_an_in_flight_stream_then_unloads(multi):
    chat(multi, "chat-b")
    chunks: list[dict] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": "chat-b", "messages": MSG, "max_tokens": 48, "ignore_eos": True,
                "stream": True}
        with multi.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    r = multi.delete("/v1/models/chat-b")
    t.join(60)
    assert r.status_code == 200
    deleted = r.json()
    validate(deleted, "DeleteModelResponse")
    assert deleted == {"id": "chat-b", "object": "model", "deleted": True}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len([x for x in text if x]) >= 40  # every token arrived before the unload
    assert states(multi)["chat-b"] == "unloaded"
    assert chat(multi, "chat-b").status_code == 200  # and it loads again on use
    assert states(multi)["chat-b"] == "loaded"


def test_lru_keeps_at_most_n_models_loaded(lru):
    assert states(lru)["chat-a"] == "loaded"
    assert chat(lru, "chat-b").status_code == 200
    s = states(lru)
    assert (s["chat-a"], s["chat-b"]) == ("unloaded", "loaded")
    assert lru.post("/v1/embeddings", json={"model": EMB, "input": "x"}).status_code == 200
    s = states(lru)
    assert (s["chat-a"], s["chat-b"], s[EMB]) == ("unloaded", "unloaded", "loaded")
    assert chat(lru, "chat-a").status_code == 200
    s = states(lru)
    assert (s["chat-a"], s["chat-b"], s[EMB]) == ("loaded", "unloaded", "unloaded")
    assert lru.get("/health").status_code == 200


def test_a_busy_model_is_not_evicted(lru):
    chat(lru, "chat-a")
    done: list[httpx.Response] = []
    t = threading.Thread(target=lambda: done.append(chat(lru, "chat-a", max_tokens=40)))
    t.start()
    deadline = time.monotonic() + 30
    while lru.get("/health").json()["models"]["chat-a"].get("running", 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    b = chat(lru, "chat-b")  # must wait for chat-a to go idle, then evict it
    t.join(60)
    assert b.status_code == 200
    a = done[0]
    assert a.status_code == 200 and a.json()["usage"]["completion_tokens"] > 0
    assert a.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert states(lru)["chat-b"] == "loaded"


def test_models_config_accepts_a_list_or_a_models_key(tmp_path):
    from ferry.services.models import ModelSpec, load_models_config

    p = tmp_path / "m.yaml"
    p.write_text("- path: /m/a.gguf\n- {alias: e, path: /m/e, kind: embedding, parallel: 3}\n")
    assert load_models_config(str(p)) == [ModelSpec("a", "/m/a.gguf"),
                                           ModelSpec("e", "/m/e", "embedding", None, 3)]
    p.write_text("models:\n  - {alias: w, path: /m/w, kind: transcription}\n")
    assert load_models_config(str(p))[0].kind == "transcription"
    p.write_text("- {path: /m/v.gguf, mmproj: /m/v-mmproj.gguf}\n")
    assert load_models_config(str(p))[0].mmproj == "/m/v-mmproj.gguf"


@pytest.mark.parametrize(("text", "words"), [
    ("models: 3\n", "list of models"),
    ("- alias: x\n", "needs a 'path'"),
    ("- {path: /a, kind: vision}\n", "kind 'vision'"),
    ("- {path: /a, ctx_size: 0}\n", "ctx_size must be a positive integer"),
    ("- {path: /a, parallel: true}\n", "parallel must be a positive integer"),
    ("- [unclosed\n", "cannot read"),
    ("- {path: /e, kind: embedding, mmproj: /p}\n", "mmproj must be a path, on a chat model"),
])
def test_bad_models_config_names_the_problem(tmp_path, text, words):
    from ferry.services.models import load_models_config

    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=words):
        load_models_config(str(p))
