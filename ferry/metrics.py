"""Prometheus metrics for ``GET /metrics``, one ``CollectorRegistry`` per app (no global state).

Invariants:
- Hot-path cost: the engine thread only calls ``Histogram.observe`` on children bound to its model
  (``EngineObserver``), once per sequence for queue time, TTFT and end-to-end latency and once per
  token for inter-token latency. Everything else (running/waiting, KV cells, token and prefix-hit
  counters, per-step Python overhead, live stream sessions) is read from the engines at scrape time.
- Counters read from an engine survive its unload: ``retire`` folds the engine's totals into a
  per-model carry, so ``*_total`` series never go down while the process lives.
- Label cardinality is bounded: ``model`` is a configured model id or "", ``endpoint`` a route
  template (``/v1/models/{model_id}``) or "other" for unmatched paths.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from ferry.api.deps import app_state

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes (names are ASCII)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

# engine attribute -> (metric name, help) for counters read at scrape time
_ENGINE_COUNTERS = {
    "tokens_prompt": ("ferry_prompt_tokens", "Prompt tokens computed (prefill, cache hits excluded)"),
    "tokens_generated": ("ferry_generation_tokens", "Tokens generated"),
    "prefix_hits": ("ferry_prefix_cache_hits", "Sequences that reused a cached prompt prefix"),
    "steps": ("ferry_engine_steps", "Engine steps that ran a batch"),
    "python_s": ("ferry_engine_python_seconds",
                 "Engine step time outside llama_decode (scheduling, sampling glue, detok)"),
    "decode_s": ("ferry_engine_decode_seconds", "Time spent in llama_decode"),
    "spec_drafted": ("ferry_spec_draft_tokens", "Speculative tokens drafted (n-gram lookup)"),
    "spec_accepted": ("ferry_spec_accepted_tokens", "Speculative drafted tokens accepted"),
}


# prompt cache: status() key -> (metric name, help); one series per tier
_CACHE_COUNTERS = {
    "hits": ("ferry_prompt_cache_hits", ("Sequences that reused a cached prompt prefix, by the "
                                         "tier it came from (pool: KV pool; ram: host RAM)")),
    "restored_tokens": ("ferry_prompt_cache_restored_tokens",
                        ("Prompt tokens taken from the cache instead of computed, by tier "
                         "(computed ones: ferry_prompt_tokens)")),
    "evictions": ("ferry_prompt_cache_evictions", ("Cache entries evicted, by the tier they left "
                                                   "(pool: moved to RAM or dropped; ram: dropped)")),
}
_CACHE_GAUGES = {
    "bytes": ("ferry_prompt_cache_bytes", "Bytes held by the prompt cache, by tier"),
    "entries": ("ferry_prompt_cache_entries", "Cached prompts, by tier"),
}
TIERS = ("pool", "ram")


class EngineObserver:
    """Histogram children bound to one model; the engine calls ``observe`` on them."""

    __slots__ = ("e2e", "itl", "queue", "ttft")

    def __init__(self, m: Metrics, model: str) -> None:
        self.queue = m.queue_time.labels(model=model)
        self.ttft = m.ttft.labels(model=model)
        self.itl = m.itl.labels(model=model)
        self.e2e = m.e2e.labels(model=model)


def engine_totals(engine: Any) -> dict[str, float]:
    t = engine.times
    cache = engine.scheduler.cache.status()
    return {**{f"cache_{k}_{tier}": cache[k][tier] for k in _CACHE_COUNTERS for tier in TIERS},
            "tokens_prompt": engine.tokens_prompt, "tokens_generated": engine.tokens_generated,
            "prefix_hits": engine.scheduler.stats.prefix_hits, "steps": t.steps,
            "python_s": t.python_s, "decode_s": t.decode_s,
            "spec_drafted": getattr(engine, "spec_drafted", 0),
            "spec_accepted": getattr(engine, "spec_accepted", 0)}


class Metrics:
    def __init__(self, engines: Callable[[], dict[str, Any]],
                 live_sessions: Callable[[], int]) -> None:
        """``engines()`` returns the loaded chat engines by model id; ``live_sessions()`` the
        number of resumable streams being generated."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ferry_requests", "HTTP requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=r)
        self.request_seconds = Histogram("ferry_http_request_duration_seconds",
                                         "HTTP request duration until the response ended",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("ferry_queue_time_seconds", "Time a sequence waited for a "
                                    "slot", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("ferry_time_to_first_token_seconds", "Arrival to first generated "
                              "token", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("ferry_inter_token_latency_seconds", "Time between consecutive "
                             "tokens of a sequence", ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("ferry_e2e_request_latency_seconds", "Arrival to last token of a "
                             "sequence (or embedding request end to end)", ["model"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.embedding_inputs = Counter("ferry_embedding_inputs", "Inputs embedded", ["model"],
                                        registry=r)
        self._embed_tokens: dict[str, int] = defaultdict(int)
        self._carry: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        r.register(_ScrapeCollector(self, engines, live_sessions))

    def observer(self, model: str) -> EngineObserver:
        return EngineObserver(self, model)

    def retire(self, model: str, engine: Any) -> None:
        """Fold an engine's totals into the carry before it is unloaded."""
        for k, v in engine_totals(engine).items():
            self._carry[model][k] += v

    def embedded(self, model: str, inputs: int, tokens: int, seconds: float) -> None:
        self._embed_tokens[model] += tokens
        self.embedding_inputs.labels(model=model).inc(inputs)
        self.e2e.labels(model=model).observe(seconds)

    def on_response(self, scope: dict, status: int, seconds: float) -> None:
        """FerryMiddleware's per-request callback."""
        route = scope.get("route")
        endpoint = getattr(route, "path_format", None) or "other"  # /v1/models/{model_id}
        model = scope.get("state", {}).get("model") or ""
        self.requests.labels(endpoint=endpoint, model=model, status=str(status)).inc()
        self.request_seconds.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeCollector:
    """Gauges and counters read from the live engines when /metrics is scraped."""

    def __init__(self, m: Metrics, engines: Callable[[], dict[str, Any]],
                 live_sessions: Callable[[], int]) -> None:
        self.m = m
        self.engines = engines
        self.live_sessions = live_sessions

    def describe(self) -> Iterable[Metric]:
        return []  # families are dynamic; nothing to pre-register

    def collect(self) -> Iterable[Metric]:
        engines = self.engines()
        gauges = {
            "running": GaugeMetricFamily("ferry_requests_running", "Sequences decoding now",
                                         labels=["model"]),
            "waiting": GaugeMetricFamily("ferry_requests_waiting", "Sequences waiting for a slot",
                                         labels=["model"]),
            "kv": GaugeMetricFamily("ferry_kv_cache_used_cells", "KV-cache cells in use",
                                    labels=["model"]),
            "kv_frac": GaugeMetricFamily("ferry_kv_cache_usage_ratio", "KV-cache cells in use / "
                                         "cells of all slots", labels=["model"]),
        }
        counters = {k: CounterMetricFamily(name, help_, labels=["model"])
                    for k, (name, help_) in _ENGINE_COUNTERS.items()}
        totals: dict[str, dict[str, float]] = {m: dict(c) for m, c in self.m._carry.items()}
        for mid, eng in engines.items():
            st = eng.status()
            gauges["running"].add_metric([mid], st.running)
            gauges["waiting"].add_metric([mid], st.waiting)
            gauges["kv"].add_metric([mid], st.kv_cells_used)
            cells = max(1, st.kv_pool_cells)
            gauges["kv_frac"].add_metric([mid], st.kv_cells_used / cells)
            acc = totals.setdefault(mid, {})
            for k, v in engine_totals(eng).items():
                acc[k] = acc.get(k, 0.0) + v
        for mid, n in self.m._embed_tokens.items():
            acc = totals.setdefault(mid, {})
            acc["tokens_prompt"] = acc.get("tokens_prompt", 0.0) + n
        for mid, acc in sorted(totals.items()):
            for k, fam in counters.items():
                fam.add_metric([mid], acc.get(k, 0.0))
        live = GaugeMetricFamily("ferry_stream_sessions_live", "Resumable streams being "
                                 "generated")
        live.add_metric([], self.live_sessions())
        loaded = GaugeMetricFamily("ferry_models_loaded", "Chat models loaded now")
        loaded.add_metric([], len(engines))
        yield from gauges.values()
        yield from counters.values()
        yield from _cache_families(engines, totals)
        yield live
        yield loaded


def _cache_families(engines: dict[str, Any], totals: dict[str, dict[str, float]]
                    ) -> Iterable[Metric]:
    for key, (name, help_) in _CACHE_GAUGES.items():
        fam = GaugeMetricFamily(name, help_, labels=["model", "tier"])
        for mid, eng in sorted(engines.items()):
            st = eng.scheduler.cache.status()
            for tier in TIERS:
                fam.add_metric([mid, tier], st[key][tier])
        yield fam
    for key, (name, help_) in _CACHE_COUNTERS.items():
        cfam = CounterMetricFamily(name, help_, labels=["model", "tier"])
        for mid, acc in sorted(totals.items()):
            for tier in TIERS:
                cfam.add_metric([mid, tier], acc.get(f"cache_{key}_{tier}", 0.0))
        yield cfam


router = APIRouter()


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    body = app_state(request).metrics.render()
    return Response(body, media_type=CONTENT_TYPE)
