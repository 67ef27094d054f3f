"""Cost of Ferry's metric observations on the engine thread.

Per step the engine reads the clock once and, per sequence that produced a token, makes one
``Histogram.observe`` (TTFT for the first token, ITL after) plus a dict store; per finished
sequence one more observe. This measures those calls in isolation and as a share of a real
engine step (``Engine.times`` of a short generation with and without the observer).

    python benchmarks/metrics_overhead.py
"""

from __future__ import annotations

import asyncio
import time

from ferry.app import engine_config
from ferry.engine.engine import Engine
from ferry.engine.model import Model, bundled_model_path
from ferry.engine.sequence import SamplingParams
from ferry.metrics import Metrics
from ferry.settings import Settings

N = 200_000


def per_call() -> float:
    obs = Metrics(dict, lambda: 0).observer("m")
    last: dict[int, float] = {}
    t0 = time.perf_counter()
    for i in range(N):
        now = time.monotonic()
        obs.itl.observe(now - last.get(i & 7, now))
        last[i & 7] = now
    return (time.perf_counter() - t0) / N


async def generation(engine: Engine, n_seqs: int, tokens: int) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    left = [n_seqs]

    def sink(o) -> None:
        if o.finish_reason:
            left[0] -= 1
            if not left[0]:
                done.set()

    for i in range(n_seqs):
        engine.submit([1, 2, 3, 4 + i], SamplingParams(ignore_eos=True), tokens, sink)
    await done.wait()
    del loop


async def per_step(observed: bool) -> tuple[float, float]:
    model = Model(bundled_model_path())
    engine = Engine(model, engine_config(Settings(ctx_size=4096, parallel=8, threads=2)))
    if observed:
        engine.observer = Metrics(dict, lambda: 0).observer("m")
    engine.start(asyncio.get_running_loop())
    try:
        await generation(engine, 8, 64)
        t = engine.times
        return t.python_s / t.steps * 1e6, t.decode_s / t.steps * 1e6
    finally:
        engine.stop()
        model.close()


def main() -> None:
    print(f"observe + clock + dict store: {per_call() * 1e6:.2f} us per token")
    for observed in (False, True):
        py, dec = asyncio.run(per_step(observed))
        print(f"observer={'on ' if observed else 'off'}: python {py:.0f} us/step, "
              f"decode {dec:.0f} us/step (8 sequences, 64 tokens each)")


if __name__ == "__main__":
    main()
