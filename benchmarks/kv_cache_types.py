"""KV-cache types (--cache-type-k/v f16 | q8_0 | q4_0): KV bytes per slot and decode speed.

For each model and type: one llama.cpp context (one slot, 2048 cells, Ferry's Runner with the
type's Placement), a ~1000-token prompt prefilled, then greedy decoding. KV bytes are
``llama_state_seq_get_size`` of the slot after the prompt (its cells' K and V rows plus a small
header); decode tok/s over ``--tokens`` tokens. Types run in alternating order per round
(f16 q8 q4, q4 q8 f16, ...); medians over rounds.

Run: .venv/bin/python benchmarks/kv_cache_types.py [--rounds 3] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import llama_cpp as ll
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import GEMMA_TEMPLATE, assemble_gemma

from ferry.engine.chat_template import ChatTemplate
from ferry.engine.hardware import Placement
from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence

TYPES = ("f16", "q8_0", "q4_0")


def prompt_for(model: Model) -> list[int]:
    tpl = ChatTemplate(model.chat_template or GEMMA_TEMPLATE, model.bos_text, model.eos_text)
    notes = " ".join(f"Note {i}: the river bends east at mile {i * 7}." for i in range(70))
    return model.tokenize(tpl.render([{"role": "user", "content": notes + " Summarize."}]))


def one(model: Model, kind: str, prompt: list[int], n: int, threads: int) -> tuple[int, float]:
    runner = Runner(model, RunnerConfig(2048, 1, threads, 512,
                                        Placement(cache_type_k=kind, cache_type_v=kind)))
    try:
        seq = Sequence(prompt, SamplingParams(), n, lambda o: None)
        seq.slot = 0
        rows = {}
        for i in range(0, len(prompt), 512):
            chunk = prompt[i:i + 512]
            rows = runner.run(StepPlan(work=[Work(seq, chunk, i, i + 512 >= len(prompt))]))
        kv = ll.llama_state_seq_get_size(runner.ctx, 0)
        pos, t0 = len(prompt), time.perf_counter()
        for _ in range(n):  # no stop at EOS: the same work for every type
            tok = int(np.argmax(runner.logits(rows[seq.id])))
            rows = runner.run(StepPlan(work=[Work(seq, [tok], pos, True)]))
            pos += 1
        return kv, n / (time.perf_counter() - t0)
    finally:
        runner.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print("| model | prompt tokens | type | KV bytes per slot (× f16) | decode tok/s (× f16) |")
    print("|---|---|---|---|---|")
    for name, path in (("SmolLM2-135M Q4_1", bundled_model_path()),
                       ("Gemma 3 270M Q4_K_M", assemble_gemma())):
        model = Model(path)
        prompt = prompt_for(model)
        kv: dict[str, int] = {}
        speed: dict[str, list[float]] = {t: [] for t in TYPES}
        for r in range(args.rounds):
            for kind in TYPES if r % 2 == 0 else TYPES[::-1]:
                kv[kind], tps = one(model, kind, prompt, args.tokens, args.threads)
                speed[kind].append(tps)
        med = {t: statistics.median(v) for t, v in speed.items()}
        for t in TYPES:
            print(f"| {name} | {len(prompt)} | {t} | {kv[t]:,} ({kv[t] / kv['f16']:.2f}×) | "
                  f"{med[t]:.1f} ({med[t] / med['f16']:.2f}×) |")
        model.close()


if __name__ == "__main__":
    main()
