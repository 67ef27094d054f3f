"""Constraint overhead of structured outputs on SmolLM2-135M Q4_1 (vocab 49152).

Measures, with the same decode loop as tests/test_structured.py (batch of one, 2 threads):
- per-token time of ``apply`` + ``accept`` (llguidance backend, ferry.structured.constraint);
- tokens/s of free vs llguidance-constrained generation;
- tokens/s with llama.cpp's grammar sampler (llama-cpp-python's json_schema_to_gbnf) in the chain.

Run: .venv/bin/python benchmarks/structured.py [--runs 4] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from llama_cpp.llama_grammar import json_schema_to_gbnf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_structured import SCHEMAS, SmolModel, ask_json, gguf_path

from ferry.structured.constraint import TokenConstraint, compile_json_schema

BENCH_SCHEMAS = ("person_required_and_optional", "ref_and_defs", "enum_values")


class Timed:
    """Wraps a constraint and records the wall time of each apply and accept."""

    def __init__(self, inner: TokenConstraint, apply_s: list[float], accept_s: list[float]):
        self.inner, self.apply_s, self.accept_s = inner, apply_s, accept_s

    def apply(self, logits: np.ndarray) -> None:
        t = time.perf_counter()
        self.inner.apply(logits)
        self.apply_s.append(time.perf_counter() - t)

    def accept(self, token: int) -> None:
        t = time.perf_counter()
        self.inner.accept(token)
        self.accept_s.append(time.perf_counter() - t)

    def is_complete(self) -> bool:
        return self.inner.is_complete()


def decode_ms_per_token(m: SmolModel, prompt: list[int], seed: int, max_tokens: int,
                        **kw) -> tuple[float, int]:  # fmt: skip
    """Wall time per generated token, excluding the prompt's decode (timed separately)."""
    t = time.perf_counter()
    m.generate(prompt, None, seed=seed, max_tokens=0)
    prompt_s = time.perf_counter() - t
    factory = kw.get("factory")
    t = time.perf_counter()
    g = m.generate(prompt, factory() if factory else None, seed=seed, max_tokens=max_tokens,
                   gbnf=kw.get("gbnf"))  # fmt: skip
    return max(time.perf_counter() - t - prompt_s, 0.0), g.n_tokens


def tokens_per_s(samples: list[tuple[float, int]]) -> float:
    return sum(n for _, n in samples) / sum(s for s, _ in samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    m = SmolModel(gguf_path())
    m.generate(ask_json(m, "warm up"), None, seed=0, max_tokens=16)  # first decode allocates
    print(
        "| schema | compile ms (first / cached) | apply µs p50 / p99 | accept µs p50 | "
        "apply+accept µs mean | free tok/s | llguidance tok/s (ratio) | "
        "llama.cpp grammar tok/s (ratio) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in BENCH_SCHEMAS:
        schema, instruction = SCHEMAS[name]
        prompt = ask_json(m, instruction)
        t = time.perf_counter()
        factory = compile_json_schema(schema, m.vocab)
        first_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        compile_json_schema(schema, m.vocab)
        cached_ms = (time.perf_counter() - t) * 1e3
        apply_s: list[float] = []
        accept_s: list[float] = []
        for seed in range(args.runs):
            m.generate(prompt, Timed(factory(), apply_s, accept_s), seed=seed,
                       max_tokens=args.max_tokens)  # fmt: skip
        grammar = json_schema_to_gbnf(json.dumps(schema))
        runs: dict[str, list[tuple[float, int]]] = {"free": [], "llg": [], "gbnf": []}
        for seed in range(args.runs):  # interleaved so machine load hits all three alike
            runs["free"].append(decode_ms_per_token(m, prompt, seed, args.max_tokens))
            runs["llg"].append(decode_ms_per_token(m, prompt, seed, args.max_tokens,
                                                   factory=factory))  # fmt: skip
            runs["gbnf"].append(decode_ms_per_token(m, prompt, seed, args.max_tokens,
                                                    gbnf=grammar))  # fmt: skip
        free, llg, gbnf = (tokens_per_s(runs[k]) for k in ("free", "llg", "gbnf"))
        us = [x * 1e6 for x in apply_s]
        q = statistics.quantiles(us, n=100)
        acc = statistics.median(x * 1e6 for x in accept_s)
        both = (sum(apply_s) + sum(accept_s)) / len(apply_s) * 1e6
        print(f"| {name} | {first_ms:.1f} / {cached_ms:.2f} | {q[49]:.0f} / {q[98]:.0f} | "
              f"{acc:.0f} | {both:.0f} | {free:.1f} | {llg:.1f} ({llg / free:.2f}×) | "
              f"{gbnf:.1f} ({gbnf / free:.2f}×) |")  # fmt: skip
    m.close()


if __name__ == "__main__":
    main()
