"""GET /metrics: Prometheus text parsed with prometheus_client's own parser, values moving as
real requests run; per-app registries; the API key guards it."""

from __future__ import annotations

import threading

import httpx
import pytest
from conftest import FerryServer
from prometheus_client.parser import text_string_to_metric_families

from ferry.metrics import Metrics

MSG = [{"role": "user", "content": "Say hello."}]


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def model_of(http: httpx.Client) -> str:
    return http.get("/v1/models").json()["data"][0]["id"]


def test_chat_request_moves_counters_and_histograms(http):
    model = model_of(http)
    before = scrape(http)
    r = http.post("/v1/chat/completions", json={"model": model, "messages": MSG,
                                                "max_tokens": 8, "ignore_eos": True})
    assert r.status_code == 200
    after = scrape(http)
    d = {n: total(after, n, model=model) - total(before, n, model=model) for n in (
        "ferry_generation_tokens_total", "ferry_prompt_tokens_total",
        "ferry_time_to_first_token_seconds_count", "ferry_inter_token_latency_seconds_count",
        "ferry_e2e_request_latency_seconds_count", "ferry_queue_time_seconds_count",
        "ferry_engine_steps_total", "ferry_engine_python_seconds_total")}
    assert d["ferry_generation_tokens_total"] == 8
    assert d["ferry_time_to_first_token_seconds_count"] == 1
    assert d["ferry_inter_token_latency_seconds_count"] == 7
    assert d["ferry_e2e_request_latency_seconds_count"] == 1
    assert d["ferry_queue_time_seconds_count"] == 1
    assert d["ferry_prompt_tokens_total"] >= 0 and d["ferry_engine_steps_total"] >= 8
    assert d["ferry_engine_python_seconds_total"] > 0
    ok = total(after, "ferry_requests_total", endpoint="/v1/chat/completions", model=model,
               status="200") - total(before, "ferry_requests_total",
                                     endpoint="/v1/chat/completions", model=model, status="200")
    assert ok == 1


def test_errors_are_counted_by_status_with_bounded_labels(http):
    before = scrape(http)
    http.get("/v1/models/no-such-model")
    http.get("/no/such/route/12345")
    after = scrape(http)
    d404 = (total(after, "ferry_requests_total", endpoint="/v1/models/{model_id}", status="404")
            - total(before, "ferry_requests_total", endpoint="/v1/models/{model_id}",
                    status="404"))
    assert d404 == 1
    assert not any("12345" in str(k) for k in after)
    assert total(after, "ferry_requests_total", endpoint="other", status="404") >= 1


def test_running_and_kv_gauges_follow_the_engine(http):
    model = model_of(http)
    body = {"model": model, "messages": MSG, "max_tokens": 200, "ignore_eos": True}
    t = threading.Thread(target=lambda: http.post("/v1/chat/completions", json=body))
    seen = 0.0
    with httpx.Client(base_url=str(http.base_url), timeout=60) as other:
        t.start()
        for _ in range(200):
            s = scrape(other)
            seen = max(seen, total(s, "ferry_requests_running", model=model))
            if seen:
                assert total(s, "ferry_kv_cache_used_cells", model=model) > 0
                break
        t.join(120)
        after = scrape(other)
    assert seen >= 1
    assert total(after, "ferry_requests_running", model=model) == 0
    assert total(after, "ferry_stream_sessions_live") == 0


def test_prefix_cache_hits_count_a_repeated_prompt(http):
    model = model_of(http)
    body = {"model": model, "messages": [{"role": "user", "content": "Repeat: kiwi mango."}],
            "max_tokens": 1}
    http.post("/v1/chat/completions", json=body)
    before = total(scrape(http), "ferry_prefix_cache_hits_total", model=model)
    http.post("/v1/chat/completions", json=body)
    assert total(scrape(http), "ferry_prefix_cache_hits_total", model=model) == before + 1


def test_embedding_tokens_are_counted(http):
    before = scrape(http)
    r = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a b", "c"]})
    n = r.json()["usage"]["prompt_tokens"]
    after = scrape(http)
    assert (total(after, "ferry_prompt_tokens_total", model="all-minilm-l6-v2")
            - total(before, "ferry_prompt_tokens_total", model="all-minilm-l6-v2")) == n
    assert (total(after, "ferry_embedding_inputs_total", model="all-minilm-l6-v2")
            - total(before, "ferry_embedding_inputs_total", model="all-minilm-l6-v2")) == 2


def test_two_apps_in_one_process_have_separate_registries():
    a = Metrics(dict, lambda: 0)
    b = Metrics(dict, lambda: 0)  # would raise "Duplicated timeseries" on a shared registry
    a.requests.labels(endpoint="/x", model="", status="200").inc()
    assert b"ferry_requests_total" in a.render()
    assert b'endpoint="/x"' not in b.render()


@pytest.fixture(scope="module")
def keyed():
    s = FerryServer("--parallel", "1", "--api-key", "k1")
    yield s
    s.stop()


def test_metrics_needs_the_api_key(keyed):
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    r = httpx.get(keyed.url + "/metrics", headers={"Authorization": "Bearer k1"})
    assert r.status_code == 200 and "ferry_requests_running" in r.text
