"""What the prompt cache trades: recomputing a prefix vs restoring it, and what cached cells in
the unified KV pool cost the decodes of others.

    python benchmarks/prompt_cache.py [--threads 2] [--pool 16384] [--tokens 256,1024]

Prints, on the bundled SmolLM2 (or --gguf): prefill tok/s of a prompt in 512-token batches; the
time to save one sequence's KV to host memory and to restore it (llama_state_seq_get/set_data)
per token; and the time of a batch-8 decode step with the pool empty vs with its cells filled by
cached sequences.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence


def seq(slot: int, prompt: list[int]) -> Sequence:
    s = Sequence(prompt, SamplingParams(), 1, lambda o: None)
    s.slot = slot
    return s


def prefill(r: Runner, slot: int, tokens: list[int], n_batch: int = 512) -> float:
    s = seq(slot, tokens)
    t0 = time.perf_counter()
    for pos in range(0, len(tokens), n_batch):
        chunk = tokens[pos:pos + n_batch]
        r.run(StepPlan(work=[Work(s, chunk, pos, pos + len(chunk) == len(tokens))]))
    return time.perf_counter() - t0


def decode_step(r: Runner, slots: list[int], pos: int, reps: int = 5) -> float:
    times = []
    for i in range(reps):
        work = [Work(seq(s, [1]), [100 + i], pos + i, True) for s in slots]
        t0 = time.perf_counter()
        r.run(StepPlan(work=work))
        times.append(time.perf_counter() - t0)
    for s in slots:
        r.trim(s, pos)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=int, default=16384)
    p.add_argument("--tokens", default="256,1024")
    args = p.parse_args()
    model = Model(args.gguf or bundled_model_path())
    # one unified pool: 40 ids over separate streams would give each only pool/40 cells
    r = Runner(model, RunnerConfig(args.pool, 8, args.threads, 512, n_seq_max=40,
                                   kv_unified=True))
    vocab = list(range(1000, 9000))
    print(f"bytes per cell: {r.bytes_per_cell}")
    for n in [int(x) for x in args.tokens.split(",")]:
        toks = [vocab[(i * 7919) % len(vocab)] for i in range(n)]
        dt = prefill(r, 0, toks)
        t0 = time.perf_counter()
        blob = r.save(0)
        t_save = time.perf_counter() - t0
        r.clear_slot(0)
        t0 = time.perf_counter()
        ok = r.restore(blob, 1)
        t_restore = time.perf_counter() - t0
        r.clear_slot(1)
        print(f"{n} tokens: prefill {dt:.2f} s ({n / dt:.0f} tok/s); state {len(blob) / 2**20:.1f} "
              f"MiB; save {t_save * 1e3:.1f} ms, restore {t_restore * 1e3:.1f} ms (ok={ok}); "
              f"restore is {dt / max(t_restore, 1e-9):.0f}x faster than recompute")
    slots = list(range(8))
    for s in slots:
        prefill(r, s, [vocab[(s * 31 + i) % len(vocab)] for i in range(300)])
    empty = decode_step(r, slots, 300)
    filler = (args.pool - 8 * 320) // 31 - 1  # 31 cached sequences fill the rest of the pool
    for s in range(8, 39):
        prefill(r, s, [vocab[(s * 17 + i) % len(vocab)] for i in range(filler)])
    full = decode_step(r, slots, 300)
    print(f"batch-8 decode step at 300 tokens each: pool nearly empty {empty * 1e3:.1f} ms, "
          f"pool full of cached sequences {full * 1e3:.1f} ms ({full / empty:.2f}x)")
    r.close()


if __name__ == "__main__":
    main()
