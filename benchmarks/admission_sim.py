"""Admission policy under the multi-turn load, simulated: the real Scheduler and PromptCache, a
fake KV backend, and a step-time model fitted to this machine's llama.cpp traces.

    .venv/bin/python benchmarks/admission_sim.py --conversations 24,64 [--fifo] [--last-cold 0,6]

Each conversation has its own first prompt (~370 tokens, as ``ferry bench --conversations``
sends for SmolLM2), then ``--turns - 1`` follow-ups that resend the history with the 48 answer
tokens and ~22 new ones; a conversation sends its next turn ``--rtt`` seconds after the previous
one ends, all first turns arrive at t=0 (the bench's closed loop). The step time is what
``benchmarks/step_trace`` measured for Ferry at the end of a 24-conversation run (2 threads):
a decode of w sequences on consecutive ids (7.6 ms for 1 ... 37.6 ms for 8), 6 ms more per
further run of consecutive ids (llama.cpp cuts a batch over separate KV streams at every gap),
prompt tokens 2.5 ms each (3.2 below a 64-token batch), 1.5 ms of Python a step, and 1 ms per
3 MB a RAM save, restore or copy moves. It says which admission order gives what TTFTs and
about what makespan, not what the real server reaches: confirm with ``ferry bench``.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass, field

from ferry.engine.gaps import runs
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
        self.moved += 2 * n * BYTES_PER_CELL  # a save and a restore (separate streams)

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


# decode of w sequences on consecutive ids, ms (benchmarks/step_trace, session 11)
DECODE_MS = {0: 0.0, 1: 7.6, 2: 14.8, 3: 19.5, 4: 22.6, 5: 28.8, 6: 32.1, 7: 36.0, 8: 37.6}
GAP_MS = 6.0  # per further run of consecutive ids in the decode batch


def step_ms(plan, moved_bytes: int) -> float:
    """What a step like the runner's costs: prompt chunks' tokens but the last go in a call of
    their own, the rest (one token per running sequence) in the decode call."""
    ids, ahead, alone = [], 0, 0
    decoding = any(w.logits and len(w.tokens) == 1 for w in plan.work)
    for w in plan.work:
        if len(w.tokens) == 1 or decoding:
            ids.append(w.seq.slot)
            ahead += len(w.tokens) - 1
        else:
            alone += len(w.tokens)
    t = 1.5 + moved_bytes / 3e6 + alone * 2.5
    if ahead:
        t += ahead * (2.5 if ahead >= 64 else 3.2)
    if ids:
        t += DECODE_MS[min(len(ids), 8)] * max(1, len(ids) / 8) + GAP_MS * (runs(ids) - 1)
    return t


def simulate(n_conv: int, turns: int, slots: int, max_tokens: int, seed: int, rtt: float = 0.03,
             **sched_kw) -> dict[str, float]:
    kv = Kv()
    sched = Scheduler(slots, 512, 64, kv=kv, n_seq_ids=slots, ram_budget=8192 << 20,
                      kv_keep=None, **sched_kw)
    rng = random.Random(seed)
    convs = [Conversation([rng.randrange(50_000) for _ in range(370)], turns,
                          random.Random(rng.random())) for _ in range(n_conv)]
    owner: dict[int, tuple[Conversation, bool]] = {}
    pending: list[tuple[float, Conversation]] = []  # follow-ups on their way
    now = 0.0
    generated = 0

    def send(c: Conversation, first: bool) -> None:
        s = Sequence(list(c.history), SamplingParams(), max_tokens, lambda o: None, arrival=now)
        owner[s.id] = (c, first)
        sched.add(s)

    for c in convs:
        send(c, True)
    while sched.has_work() or pending:
        for p in [p for p in pending if p[0] <= now]:
            pending.remove(p)
            send(p[1], False)
        moved = kv.moved
        plan = sched.schedule(now) if sched.has_work() else None
        if plan is None or not plan.work:
            now = min(p[0] for p in pending)
            continue
        now += step_ms(plan, kv.moved - moved) / 1000
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
                    pending.append((now + rtt, c))
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
    ap.add_argument("--rtt", type=float, default=0.03, help="seconds from a turn's end to the "
                    "next turn's arrival")
    ap.add_argument("--last-cold", default="", help="comma-separated Scheduler.last_cold values "
                    "to compare (default: the scheduler's own)")
    ap.add_argument("--no-close-gaps", action="store_true", help="leave gaps in the ids")
    ap.add_argument("--fifo", action="store_true", help="also admit in arrival order only "
                    "(llama-server's order) for comparison")
    args = ap.parse_args()
    gaps = {"close_gaps": not args.no_close_gaps}
    policies: dict[str, dict] = {"ferry": gaps}
    if args.last_cold:
        policies = {f"last_cold={v}": {**gaps, "last_cold": int(v)}
                    for v in args.last_cold.split(",")}
    if args.fifo:
        policies["fifo"] = {**gaps, "max_bypass": 0, "last_cold": 0}
    print("| conversations | policy | tok/s | wall s | 1st TTFT p50 | 1st p99 | follow-up p50 "
          "| follow-up p99 |\n|---|---|---|---|---|---|---|---|")
    for n in map(int, args.conversations.split(",")):
        for name, kw in policies.items():
            r = simulate(n, args.turns, args.parallel, args.max_tokens, seed=n, rtt=args.rtt,
                         **kw)
            print(f"| {n} | {name} | {r['tok/s']:.1f} | {r['wall s']:.0f} | {r['1st p50']:.1f} "
                  f"| {r['1st p99']:.1f} | {r['follow p50']:.1f} | {r['follow p99']:.1f} |")


if __name__ == "__main__":
    main()
