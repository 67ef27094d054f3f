"""Admission policy under the multi-turn load, simulated: the real Scheduler and PromptCache, a
fake KV backend, and a step-time model fitted to this machine's llama.cpp numbers.

    .venv/bin/python benchmarks/admission_sim.py --conversations 24,64 [--fifo]

Each conversation has its own first prompt (~370 tokens, as ``ferry bench --conversations``
sends for SmolLM2), then ``--turns - 1`` follow-ups that resend the history with the 48 answer
tokens and ~22 new ones; a conversation sends its next turn the moment the previous one ends, all
first turns arrive at t=0 (the bench's closed loop). The step time is
``12 ms + 5.5 ms per decoding sequence + 4.2 ms per prefilled token`` (a batch-8 decode step
50-55 ms, a 64-token chunk beside 7 decodes ~330 ms: RESULTS.md, benchmarks/mixed_step.py and
batch_order.py) plus 1 ms per MB moved by a RAM save or restore. It says which admission order
gives what TTFTs, not what the real server reaches: confirm with ``ferry bench``.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass, field

from ferry.engine.scheduler import Scheduler
from ferry.engine.sequence import SamplingParams, Sequence

BYTES_PER_CELL = 23_040  # SmolLM2-135M, f16 K and V: 2 x 30 layers x 3 heads x 64 x 2 bytes


class Kv:
    """A KV backend that keeps no KV but counts the bytes a real one would move."""

    bytes_per_cell = BYTES_PER_CELL

    def __init__(self) -> None:
        self.cells: dict[int, int] = {}
        self.moved = 0

    def trim(self, seq_id: int, keep: int) -> int:
        self.cells[seq_id] = min(self.cells.get(seq_id, 0), keep)
        return keep

    def copy(self, src: int, dst: int, n: int) -> None:
        self.cells[dst] = n

    def save(self, seq_id: int) -> bytes:
        n = self.cells.get(seq_id, 0) * BYTES_PER_CELL
        self.moved += n
        return bytes(n)

    def restore(self, blob: bytes, seq_id: int) -> bool:
        self.moved += len(blob)
        self.cells[seq_id] = len(blob) // BYTES_PER_CELL
        return True


@dataclass
class Conversation:
    history: list[int]
    turns_left: int
    rng: random.Random
    first_ttft: list[float] = field(default_factory=list)
    follow_ttft: list[float] = field(default_factory=list)


def step_ms(n_decode: int, n_prefill: int, moved_bytes: int) -> float:
    return 12 + 5.5 * n_decode + 4.2 * n_prefill + moved_bytes / 1e6


def simulate(n_conv: int, turns: int, slots: int, max_tokens: int, seed: int,
             **sched_kw) -> dict[str, float]:
    kv = Kv()
    sched = Scheduler(slots, 512, 64, kv=kv, n_seq_ids=slots, ram_budget=8192 << 20,
                      kv_keep=None, **sched_kw)
    rng = random.Random(seed)
    convs = [Conversation([rng.randrange(50_000) for _ in range(370)], turns,
                          random.Random(rng.random())) for _ in range(n_conv)]
    owner: dict[int, tuple[Conversation, bool]] = {}
    now = 0.0
    generated = 0

    def send(c: Conversation, first: bool) -> None:
        s = Sequence(list(c.history), SamplingParams(), max_tokens, lambda o: None, arrival=now)
        owner[s.id] = (c, first)
        sched.add(s)

    for c in convs:
        send(c, True)
    while sched.has_work():
        moved = kv.moved
        plan = sched.schedule(now)
        decoding = sum(1 for w in plan.work if w.logits and len(w.tokens) == 1)
        prefill = plan.num_tokens - decoding
        now += step_ms(decoding, prefill, kv.moved - moved) / 1000
        for w in plan.work:
            seq = w.seq
            seq.num_computed = w.pos + len(w.tokens)
            if not w.logits:
                continue
            c, first = owner[seq.id]
            if not seq.generated:
                (c.first_ttft if first else c.follow_ttft).append(now - seq.arrival)
            seq.generated.append(c.rng.randrange(50_000))
            generated += 1
            if len(seq.generated) >= seq.max_tokens:
                sched.finish(seq, "length")
                c.turns_left -= 1
                if c.turns_left:
                    c.history = seq.all_tokens + [c.rng.randrange(50_000) for _ in range(22)]
                    send(c, False)
    first = sorted(t for c in convs for t in c.first_ttft)
    follow = sorted(t for c in convs for t in c.follow_ttft)
    return {"tok/s": generated / now, "wall s": now,
            "1st p50": statistics.median(first), "1st p99": _p99(first),
            "follow p50": statistics.median(follow) if follow else 0.0,
            "follow p99": _p99(follow) if follow else 0.0}


def _p99(xs: list[float]) -> float:
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", default="24,64")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--fifo", action="store_true", help="also admit in arrival order only "
                    "(llama-server's order) for comparison")
    args = ap.parse_args()
    policies = {"ferry": {}}
    if args.fifo:
        policies["fifo"] = {"max_bypass": 0}
    print("| conversations | policy | tok/s | wall s | 1st TTFT p50 | 1st p99 | follow-up p50 "
          "| follow-up p99 |\n|---|---|---|---|---|---|---|---|")
    for n in map(int, args.conversations.split(",")):
        for name, kw in policies.items():
            r = simulate(n, args.turns, args.parallel, args.max_tokens, seed=n, **kw)
            print(f"| {n} | {name} | {r['tok/s']:.1f} | {r['wall s']:.0f} | {r['1st p50']:.1f} "
                  f"| {r['1st p99']:.1f} | {r['follow p50']:.1f} | {r['follow p99']:.1f} |")


if __name__ == "__main__":
    main()
