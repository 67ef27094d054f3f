"""What the order of sequences in a batch costs a decode step (separate KV streams).

    python benchmarks/batch_order.py [--threads 2] [--ctx 600]

llama.cpp cuts a batch over separate KV streams into ubatches of consecutive sequence ids, so the
same eight decode tokens take one graph in id order and several when shuffled or reversed.
Prints the median batch-8 decode step time for each order (bundled SmolLM2, or --gguf).
Bypasses ``Runner.run``'s own ordering by decoding the batch directly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp as ll

from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence


def _seq(slot: int) -> Sequence:
    s = Sequence([1], SamplingParams(), 1, lambda o: None)
    s.slot = slot
    return s


def decode_in_order(r: Runner, order: list[int], pos: int, token: int) -> float:
    b = r.batch
    for i, slot in enumerate(order):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, 1
        b.seq_id[i][0] = slot
    b.n_tokens = len(order)
    t0 = time.perf_counter()
    if ll.llama_decode(r.ctx, b) != 0:
        raise RuntimeError("llama_decode failed")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=600, help="tokens already in each sequence")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    r = Runner(Model(args.gguf or bundled_model_path()), RunnerConfig(16384, 8, args.threads, 512))
    for s in range(8):  # every sequence holds args.ctx tokens
        toks = [1000 + (s * 31 + i * 7919) % 8000 for i in range(args.ctx)]
        for pos in range(0, args.ctx, 512):
            chunk = toks[pos:pos + 512]
            r.run(StepPlan(work=[Work(_seq(s), chunk, pos, pos + len(chunk) == args.ctx)]))
    orders = {"id order": list(range(8)), "shuffled": [3, 0, 5, 1, 2, 4, 6, 7],
              "reversed": list(range(8))[::-1]}
    for name, order in orders.items():
        times = []
        for i in range(args.reps):
            times.append(decode_in_order(r, order, args.ctx, 100 + i))
            for s in range(8):
                r.trim(s, args.ctx)
        print(f"batch-8 decode step at {args.ctx} tokens each, {name:9s}: "
              f"{statistics.median(times) * 1e3:.1f} ms")
    r.close()


if __name__ == "__main__":
    main()
