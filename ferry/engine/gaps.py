"""Closing gaps between the running sequences' ids: which sequences move to which free ids.

With a KV stream per sequence id, llama.cpp cuts a decode batch into one ubatch per run of
consecutive ids, so running ids 0, 4, 6, 7 decode as three graphs. Measured on SmolLM2 with 2
threads (``benchmarks/step_trace``, the end of a multi-turn run): four decodes took 22.6 ms on
ids 0-3 and 33.9 ms over three runs; seven 38.1 ms in one run and 43.4 ms in two. Runs appear when
sequences finish and nothing waits to take their ids (the end of a busy period), and they last
until the batch empties. Moving a sequence costs one state copy of its cells (a few ms for a
thousand tokens), once.

Invariant: ``plan_moves`` returns moves after which the given ids form one run, moving as few
sequences as possible; every destination is an id not in ``ids`` and below ``n_ids``, every source
in ``ids``, each used once.
"""

from __future__ import annotations

from itertools import pairwise


def runs(ids: list[int]) -> int:
    """How many runs of consecutive ids ``ids`` holds (sorted or not)."""
    s = sorted(ids)
    return (1 + sum(1 for a, b in pairwise(s) if b != a + 1)) if s else 0


def plan_moves(ids: list[int], n_ids: int) -> list[tuple[int, int]]:
    """(from id, to id) moves that make ``ids`` one run of consecutive ids within ``0..n_ids-1``:
    the window of ``len(ids)`` ids that already holds the most of them (the lowest such window),
    the others moved into its free ids, outermost first into the lowest free id."""
    held = set(ids)
    r = len(held)
    if r < 2 or runs(ids) == 1:
        return []
    best_lo, best = 0, -1
    for lo in range(n_ids - r + 1):
        inside = sum(1 for i in range(lo, lo + r) if i in held)
        if inside > best:
            best_lo, best = lo, inside
    window = range(best_lo, best_lo + r)
    outside = sorted((i for i in held if i not in window), key=lambda i: -abs(i - best_lo))
    free = [i for i in window if i not in held]
    return list(zip(outside, free, strict=True))
