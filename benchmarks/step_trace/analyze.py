"""Summarise decode traces by step shape: Ferry's (``ferry_serve_traced.py``, JSON lines) and
llama-server's (``llama_process_shim.c``, text lines).

    python benchmarks/step_trace/analyze.py ferry=/tmp/f.jsonl llama-server=/tmp/ls.log

A call is "decode" when every sequence in it has one token, "prefill" when none has, else
"mixed"; time is wall time inside the call. Both servers compute the same tokens on the same
load, so the busy seconds per kind say where one spends more than the other.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def load(path: str) -> list[tuple[float, list[tuple[int, int]]]]:
    calls = []
    with open(path, errors="ignore") as f:
        for raw in f:
            line = raw.strip("\0\n ")
            if not line:
                continue
            if line.startswith("["):
                _t0, dur, work = json.loads(line)
                calls.append((dur, [(s, n) for s, n in work]))
            else:
                v = line.split()
                calls.append((float(v[1]),
                              [(int(a), int(b)) for a, b in (x.split(":") for x in v[4:])]))
    return calls


def report(name: str, calls) -> None:
    kinds: dict[str, list] = defaultdict(lambda: [0, 0.0, 0, 0])
    widths: dict[int, list[float]] = defaultdict(list)
    for dur, work in calls:
        ones = sum(1 for _, n in work if n == 1)
        many = sum(n for _, n in work if n > 1)
        kind = "decode" if many == 0 else "prefill" if ones == 0 else "mixed"
        k = kinds[kind]
        k[0] += 1
        k[1] += dur
        k[2] += many
        k[3] += ones
        if kind == "decode":
            widths[len(work)].append(dur)
    print(f"{name}: {len(calls)} calls, {sum(d for d, _ in calls):.1f} s busy")
    for kind, (n, t, many, ones) in sorted(kinds.items()):
        print(f"  {kind:8s} {n:5d} calls {t:7.1f} s  {many:6d} multi-token tokens  "
              f"{ones:5d} one-token items  {t / n * 1e3:7.1f} ms/call")
    print("  one-token calls by width (calls, median ms): "
          + ", ".join(f"{w}: ({len(v)}, {statistics.median(v) * 1e3:.1f})"
                      for w, v in sorted(widths.items())))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        report(name, load(path))
