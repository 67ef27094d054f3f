"""Speculative decoding: single-stream tokens/s with and without n-gram prompt lookup, on an
input-copying task and on free writing, for Ferry and for llama-server's own n-gram speculation.

    python benchmarks/speculative.py [--rounds 3] [--max-tokens 160]

Same GGUF (bundled SmolLM2-135M Q4_1), 2 threads, greedy; runs interleaved per round; the table
prints medians and the speed-up of each server's speculative run over its plain run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FerryServer, free_port, wait_healthy

from ferry.bench.peers import cached_llama_server
from ferry.engine.model import bundled_model_path

PARAGRAPH = ("The river runs through the old town, past the mill and the stone bridge, where "
             "children watch the boats drift slowly toward the sea every summer evening. In "
             "winter the water freezes near the banks, and the baker opens his shop an hour "
             "later, when the light finally reaches the square and the market stalls.")
TASKS = {
    "copy": f"Rewrite this paragraph exactly, changing only 'river' to 'canal':\n\n{PARAGRAPH}",
    "free": "Write a long story about a dragon who learns to cook.",
}


class LlamaServer:
    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(cached_llama_server()), "-m", bundled_model_path(), "--host", "127.0.0.1",
             "--port", str(self.port), "-np", "1", "-c", "4096", "-t", "2", "--no-webui",
             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.url, self.proc, 60, lambda: "llama-server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run(url: str, prompt: str, max_tokens: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": prompt}], "temperature": 0,
        "max_tokens": max_tokens})
    dt = time.perf_counter() - t0
    body = r.json()
    return body["usage"]["completion_tokens"] / dt, body["choices"][0]["message"]["content"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()
    # One server runs at a time (started per round, interleaved): idle llama.cpp servers left
    # running beside the measured one skew the numbers on a 2-core machine.
    configs = {
        "ferry": lambda: FerryServer("--parallel", "1", "--ctx-size", "4096",
                                     passive_wait=False),
        "ferry ngram": lambda: FerryServer("--parallel", "1", "--ctx-size", "4096",
                                           "--speculative", "ngram", passive_wait=False),
        "llama-server": lambda: LlamaServer(),
        "llama-server ngram": lambda: LlamaServer("--spec-type", "ngram-simple"),
    }
    res: dict[tuple[str, str], list[float]] = {}
    texts: dict[tuple[str, str], str] = {}
    drafted = accepted = 0
    for _ in range(args.rounds):
        for name, start in configs.items():
            srv = start()
            try:
                run(srv.url, "Hi", 8)  # warm-up
                for task, prompt in TASKS.items():
                    tps, text = run(srv.url, prompt, args.max_tokens)
                    res.setdefault((name, task), []).append(tps)
                    texts[(name, task)] = text
                if name == "ferry ngram":
                    m = httpx.get(srv.url + "/health").json()["models"]
                    s = next(iter(m.values()))["speculative"]
                    drafted += s["drafted"]
                    accepted += s["accepted"]
            finally:
                srv.stop()
    print("| server | task | tok/s (median) | speed-up vs same server plain |")
    print("|---|---|---|---|")
    for (name, task), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = statistics.median(res[(name.removesuffix(" ngram"), task)])
        print(f"| {name} | {task} | {statistics.median(v):.1f} | "
              f"{statistics.median(v) / base:.2f}× |")
    print(f"\nFerry n-gram drafts: {drafted} drafted, {accepted} accepted "
          f"({accepted / max(drafted, 1):.0%}) over all rounds and tasks")
    for task in TASKS:
        same = texts[("ferry", task)] == texts[("ferry ngram", task)]
        print(f"Ferry greedy text identical with and without ngram ({task}): {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
