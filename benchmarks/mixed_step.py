"""A step that decodes some sequences while prefilling a prompt chunk: one ``llama_decode`` of
the mixed batch vs ``Runner.run``, which decodes the chunk on its own first and then the decodes
(with ``--last``, the chunk is a prompt's last and needs logits: all but its last token go
ahead, that token joins the decodes).

    python benchmarks/mixed_step.py [--threads 2] [--chunk 64] [--ctx 600] [--reps 10]
                                    [--last] [--slot 7] [--holes]

Seven sequences of ``--ctx`` tokens decode one token each while the one with id ``--slot``
prefills ``--chunk`` tokens at the same depth (separate KV streams, bundled SmolLM2 or --gguf).
The two forms alternate within each repetition; prints the median of each.

``--holes`` compares three forms of a step, each repeated ``--reps`` times in a row (as in a
server, where llama.cpp can reuse the graph of the step before): ``Runner.run``; the chunk alone,
then the 7 decodes without the chunk's id (a gap in the ids: llama.cpp cuts that batch in two);
one mixed decode.

``--outputs`` times 8 one-token decodes at ``--ctx`` with logits for all 8 against the same
batch with no logits for id ``--slot`` (a prompt token beside the decodes), through
``llama_decode`` directly (``Runner._decode`` now asks for every row in such a call).
"""

from __future__ import annotations

import argparse
import statistics
import time

from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence


def _seq(slot: int) -> Sequence:
    s = Sequence([1], SamplingParams(), 1, lambda o: None)
    s.slot = slot
    return s


def _tokens(seed: int, n: int) -> list[int]:
    return [1000 + (seed * 31 + i * 7919) % 8000 for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--ctx", type=int, default=600)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--last", action="store_true", help="the chunk is a prompt's last (logits)")
    p.add_argument("--slot", type=int, default=7, choices=range(8), help="the prefilling id")
    p.add_argument("--holes", action="store_true", help="Runner.run vs leaving the id out")
    p.add_argument("--outputs", action="store_true", help="8 logits rows vs 7 in 8 decodes")
    args = p.parse_args()
    r = Runner(Model(args.gguf or bundled_model_path()), RunnerConfig(16384, 8, args.threads, 512))
    for s in range(8):
        toks = _tokens(s, args.ctx)
        for pos in range(0, args.ctx, 512):
            chunk = toks[pos:pos + 512]
            r.run(StepPlan(work=[Work(_seq(s), chunk, pos, pos + len(chunk) == args.ctx)]))

    def timed(i: int, split: bool | None) -> float:
        decodes = [Work(_seq(s), [100 + i], args.ctx, True) for s in range(8) if s != args.slot]
        chunk = Work(_seq(args.slot), _tokens(99 + i, args.chunk), args.ctx, args.last)
        work = sorted([*decodes, chunk], key=lambda w: w.seq.slot)
        t0 = time.perf_counter()
        if split is None:  # the chunk alone, then the decodes with a gap at its id
            r._decode([chunk])
            r._decode(decodes)
        elif split:
            r.run(StepPlan(work=work))  # the chunk (but a last chunk's last token) goes ahead
        else:
            r._decode(work)  # one mixed batch
        dt = time.perf_counter() - t0
        for s in range(8):
            r.trim(s, args.ctx)
        return dt

    if args.outputs:
        _outputs(r, args)
        return
    if args.holes:
        forms = {"Runner.run": True, "chunk alone, then decodes with a gap": None,
                 "one mixed decode": False}
        for name, form in forms.items():
            ms = statistics.median(timed(i, form) for i in range(args.reps)) * 1e3
            print(f"7 decodes + a {args.chunk}-token chunk (id {args.slot}) at {args.ctx}: "
                  f"{name} {ms:.1f} ms")
        r.close()
        return
    mixed, split = [], []
    for i in range(args.reps):
        mixed.append(timed(i, False))
        split.append(timed(i, True))
    m, s2 = statistics.median(mixed) * 1e3, statistics.median(split) * 1e3
    kind = "last chunk" if args.last else "chunk"
    print(f"7 decodes + a {args.chunk}-token {kind} (id {args.slot}) at {args.ctx}: one mixed "
          f"decode {m:.1f} ms, Runner.run {s2:.1f} ms ({s2 / m:.2f}x)")
    r.close()


def _outputs(r: Runner, args: argparse.Namespace) -> None:
    """8 decodes in a row with every row's logits vs without id ``--slot``'s, each form
    ``--reps`` times in a row (as in a server); median of each, the first 4 calls left out."""
    import llama_cpp as ll

    for name, skip in (("8 of 8 outputs", None), (f"7 of 8 (none for id {args.slot})", args.slot),
                       ("8 of 8 outputs again", None)):
        ts = []
        for i in range(args.reps + 4):
            for s in range(8):
                r._tok[s], r._pos[s], r._nseq[s] = 100 + i, args.ctx + i, 1
                r._seq[s][0], r._lg[s] = s, s != skip
            r.batch.n_tokens = 8
            t0 = time.perf_counter()
            if ll.llama_decode(r.ctx, r.batch) != 0:
                raise SystemExit("llama_decode failed")
            ts.append(time.perf_counter() - t0)
        for s in range(8):
            r.trim(s, args.ctx)
        print(f"8 decodes at {args.ctx}: {name} {statistics.median(ts[4:]) * 1e3:.1f} ms")
    r.close()


if __name__ == "__main__":
    main()
