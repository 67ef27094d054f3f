"""Speculative decoding: single-stream tokens/s with and without n-gram prompt lookup, on an
input-copying task and on free writing, for Ferry and for llama-server's own n-gram speculation.

    python benchmarks/speculative.py [--rounds 3] [--max-tokens 160] [--no-cost]

Same GGUF (bundled SmolLM2-135M Q4_1), 2 threads, streamed, greedy (and one seeded temperature-0.8
copy run, which Ferry also speculates on); runs interleaved per round; the table prints medians of
end-to-end tok/s (prefill included) and decode tok/s (after the first token), and the decode
speed-up of each server's speculative run over its plain run. First, the cost of verifying k
tokens in one decode, measured in process, which bounds what any drafter can gain here.
"ferry draft (self)" uses the bundled GGUF as its own draft model: it shows exactness and the
drafting overhead, not a speed-up (a draft as costly as the target cannot pay off).
"""

from __future__ import annotations

import argparse
import json
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


def run(url: str, prompt: str, max_tokens: int, temperature: float) -> dict:
    """One streamed request: end-to-end tok/s (prefill included), decode tok/s (after the first
    token), the text and the usage's draft counts."""
    t0 = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    usage: dict = {}
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": prompt}], "temperature": temperature,
            "seed": 7, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices") or []:
                if c["delta"].get("content"):
                    times.append(time.perf_counter())
                    parts.append(c["delta"]["content"])
    n = usage.get("completion_tokens", len(times))
    details = usage.get("completion_tokens_details") or {}
    return {"e2e": n / (times[-1] - t0), "decode": (n - 1) / (times[-1] - times[0]),
            "text": "".join(parts), "accepted": details.get("accepted_prediction_tokens", 0),
            "rejected": details.get("rejected_prediction_tokens", 0)}


def verify_cost(reps: int = 40) -> None:
    """What verifying k tokens of one sequence costs against decoding one (in process, no
    server), and the speed-up that perfect acceptance of k-1 drafted tokens would give."""
    from ferry.engine.model import Model
    from ferry.engine.runner import Runner, RunnerConfig
    from ferry.engine.scheduler import StepPlan, Work
    from ferry.engine.sequence import SamplingParams, Sequence

    runner = Runner(Model(bundled_model_path()), RunnerConfig(4096, 1, 2, 512))
    seq = Sequence(list(range(100, 300)), SamplingParams(), 10, lambda o: None)
    seq.slot = 0
    runner.run(StepPlan([Work(seq, seq.prompt, 0, True)]))
    cost = {}
    for k in (1, 2, 3, 4, 5, 8, 9, 12, 16, 17):
        toks = list(range(500, 500 + k))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            runner.run(StepPlan([Work(seq, toks, 200, True, toks[1:])]))
            ts.append(time.perf_counter() - t)
            runner.trim(0, 200)
        cost[k] = statistics.median(ts)
    runner.close()
    print("| tokens verified (1 + draft) | ms | × one decode | ceiling speed-up (all accepted) |")
    print("|---|---|---|---|")
    for k, t in cost.items():
        print(f"| {k} | {t * 1e3:.1f} | {t / cost[1]:.2f} | {k * cost[1] / t:.2f}× |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--no-cost", action="store_true", help="skip the verify-cost table")
    args = ap.parse_args()
    if not args.no_cost:
        verify_cost()
    base = ("--parallel", "1", "--ctx-size", "4096")
    # One server runs at a time (started per round, interleaved): idle llama.cpp servers left
    # running beside the measured one skew the numbers on a 2-core machine.
    configs = {
        "ferry": lambda: FerryServer(*base, passive_wait=False),
        "ferry ngram": lambda: FerryServer(*base, "--speculative", "ngram", passive_wait=False),
        "ferry draft (self)": lambda: FerryServer(
            *base, "--speculative", "draft", "--draft-model", bundled_model_path(),
            passive_wait=False),
        "llama-server": LlamaServer,
        "llama-server ngram": lambda: LlamaServer("--spec-type", "ngram-simple"),
    }
    runs = [(task, 0.0) for task in TASKS] + [("copy", 0.8)]
    res: dict[tuple[str, str, float], list[dict]] = {}
    for _ in range(args.rounds):
        for name, start in configs.items():
            srv = start()
            try:
                run(srv.url, "Hi", 8, 0.0)  # warm-up
                for task, temp in runs:
                    res.setdefault((name, task, temp), []).append(
                        run(srv.url, TASKS[task], args.max_tokens, temp))
            finally:
                srv.stop()
    print("\n| server | task | temp | tok/s e2e | tok/s decode | decode vs plain | drafts accepted |")
    print("|---|---|---|---|---|---|---|")
    for (name, task, temp), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        plain = "ferry" if name.startswith("ferry") else "llama-server"

        def med(key: str, rs: list[dict]) -> float:
            return statistics.median(r[key] for r in rs)

        acc, rej = sum(r["accepted"] for r in v), sum(r["rejected"] for r in v)
        rate = f"{acc}/{acc + rej} ({acc / (acc + rej):.0%})" if acc + rej else "–"
        print(f"| {name} | {task} | {temp} | {med('e2e', v):.1f} | {med('decode', v):.1f} | "
              f"{med('decode', v) / med('decode', res[(plain, task, temp)]):.2f}× | {rate} |")
    for (name, task, temp), v in res.items():
        if name.startswith("ferry "):
            same = v[-1]["text"] == res[("ferry", task, temp)][-1]["text"]
            print(f"{name}, {task}, temperature {temp}: text identical to plain Ferry: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
