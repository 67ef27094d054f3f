"""``ferry serve`` with every ``llama_decode`` of the chat engine timed, for comparing step shapes
with llama-server (``llama_process_shim.c``) on the same load.

    python benchmarks/step_trace/ferry_serve_traced.py OUT.jsonl serve --parallel 8 --port 18300

Each decode appends one line to OUT.jsonl: ``[start, seconds, [[id, tokens], ...]]`` (start on
the monotonic clock; one pair per sequence in the batch). ``analyze.py`` summarises it.
"""

from __future__ import annotations

import json
import sys
import time

import ferry.engine.runner as runner_mod
from ferry.cli import main

_out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - lives as long as the server
_decode = runner_mod.Runner._decode


def _timed(self, work):
    t0 = time.monotonic()
    rows = _decode(self, work)
    _out.write(json.dumps([t0, time.monotonic() - t0,
                           [[w.seq.slot, len(w.tokens)] for w in work if w.image is None]]) + "\n")
    return rows


runner_mod.Runner._decode = _timed  # type: ignore[method-assign]
raise SystemExit(main(sys.argv[2:]))
