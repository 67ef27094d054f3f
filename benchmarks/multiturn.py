"""Multi-turn chat load: N conversations at once, each its own document, T questions in a row,
every turn resending the whole history. Reports the prompt-cache hit rate of follow-up turns
(``cached_tokens / prompt_tokens`` from usage) and first-turn / follow-up TTFT, per target, in
alternating rounds (A B, B A, ...).

    python benchmarks/multiturn.py --url http://127.0.0.1:8000 --url http://127.0.0.1:8001 \\
        --conversations 8 --turns 4 --rounds 3

Used for Ray routing on vs off (two front doors of one deployment, ``--ray-routing cache`` and
``random``); a stand-in until ``ferry bench --conversations N --turns T`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import httpx

WORDS = ("river", "stone", "light", "house", "water", "green", "night", "field", "north", "cloud")


def document(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def turn(client: httpx.AsyncClient, url: str, messages: list, max_tokens: int,
               headers: dict) -> tuple[float, dict, str]:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, usage, text = None, {}, []
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices") or []:
                if c["delta"].get("content"):
                    ttft = ttft or time.perf_counter() - t0
                    text.append(c["delta"]["content"])
            usage = chunk.get("usage") or usage
    return ttft or time.perf_counter() - t0, usage, "".join(text)


async def conversation(client, url: str, seed: int, turns: int, words: int, max_tokens: int,
                       use_id: bool) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    messages = [{"role": "user", "content": f"Document:\n{document(rng, words)}\n\nSummarise it."}]
    headers = {"X-Conversation-Id": f"bench-{seed}"} if use_id else {}
    out = []
    for i in range(turns):
        ttft, usage, text = await turn(client, url, messages, max_tokens, headers)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        out.append((ttft, usage.get("prompt_tokens", 0), cached))
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"Question {i + 2}: which word comes first?"}]
    return out


async def run(url: str, args, seed: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        convs = await asyncio.gather(*(
            conversation(client, url, seed + i, args.turns, args.words, args.max_tokens,
                         not args.no_conversation_id)
            for i in range(args.conversations)))
        elapsed = time.perf_counter() - t0
    first = [c[0][0] for c in convs]
    follow = [t for c in convs for t in c[1:]]
    prompt = sum(p for _, p, _ in follow)
    return {"first_ttft_p50": statistics.median(first),
            "follow_ttft_p50": statistics.median(t for t, _, _ in follow),
            "hit_rate": sum(c for _, _, c in follow) / max(prompt, 1),
            "tok_s": args.conversations * args.turns * args.max_tokens / elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--words", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-conversation-id", action="store_true",
                   help="send no X-Conversation-Id (prefix routing alone)")
    args = p.parse_args()
    results: dict[str, list[dict]] = {u: [] for u in args.url}
    for r in range(args.rounds):
        order = args.url if r % 2 == 0 else args.url[::-1]
        for u in order:
            res = asyncio.run(run(u, args, seed=1000 * (r + 1) + 100 * args.url.index(u)))
            results[u].append(res)
            print(f"round {r + 1} {u}: " + " ".join(f"{k}={v:.3f}" for k, v in res.items()),
                  flush=True)
    print("| target | hit rate | first-turn TTFT p50 s | follow-up TTFT p50 s | tok/s |")
    print("|---|---|---|---|---|")
    for u, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        print(f"| {u} | {med['hit_rate']:.2f} | {med['first_ttft_p50']:.2f} | "
              f"{med['follow_ttft_p50']:.2f} | {med['tok_s']:.1f} |")


if __name__ == "__main__":
    main()
