"""The multi-turn scenario: N conversations at once, each about its own document, T turns each.

Invariants:
- Conversation ``i`` opens with its own ~300-word document (seeded by ``i``, so every target
  sees the same text) and a first question; every later turn resends the whole history
  (document, questions and the answers streamed so far) plus a new question. Each round numbers
  its conversations after the last round's, so a server measured by ``--url`` round after round
  finds no earlier round's history in its cache.
- A conversation's turns run one after the other; conversations run concurrently, so a server
  with fewer slots than conversations must keep (or recompute) histories across other users.
- Results carry their turn index, so first turns and follow-ups are summarised apart.
- The history goes out as chat ``messages``, Messages ``messages`` or Responses ``input`` items;
  the completions API has no history, so the command line refuses it for this scenario.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx

from ferry.bench.client import RequestSpec, stream_request
from ferry.bench.stats import RequestResult
from ferry.bench.words import WORDS

DOC_WORDS = 300
QUESTIONS = (
    "Summarise the document in two sentences.",
    "Which places does the document mention?",
    "What happens in the morning, according to the document?",
    "Who would find this document useful, and why?",
    "List three objects the document names.",
    "What is the mood of the document?",
    "Write a title for the document.",
    "What question would you ask the author?",
)


def document(i: int) -> str:
    rng = random.Random(i)
    words = [rng.choice(WORDS) for _ in range(DOC_WORDS)]
    sentences = [" ".join(words[j:j + 12]).capitalize() + "." for j in range(0, DOC_WORDS, 12)]
    return f"Document {i}.\n" + " ".join(sentences)


def first_message(i: int) -> str:
    return f"Read this document and answer my questions.\n\n{document(i)}\n\n{QUESTIONS[0]}"


async def conversation(client: httpx.AsyncClient, base_url: str, spec: RequestSpec, i: int,
                       turns: int, done: Callable[[RequestResult], None]) -> None:
    messages = [{"role": "user", "content": first_message(i)}]
    for t in range(turns):
        result = await stream_request(client, base_url, spec, i, messages)
        result.turn = t
        done(result)
        if not result.ok:
            return  # the history is broken; the remaining turns are not sent
        messages += [{"role": "assistant", "content": result.text},
                     {"role": "user", "content": QUESTIONS[(t + 1) % len(QUESTIONS)]}]


async def run_conversations(
    base_url: str, spec: RequestSpec, *, conversations: int, turns: int,
    first_index: int = 0, on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Run conversations ``first_index`` .. ``first_index + conversations - 1`` to their last
    turn; return each request's result and the wall time."""
    limits = httpx.Limits(max_connections=conversations, max_keepalive_connections=conversations)
    results: list[RequestResult] = []

    def done(r: RequestResult) -> None:
        results.append(r)
        if on_done is not None:
            on_done(len(results))

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(spec.timeout_s)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(conversation(client, base_url, spec, i, turns, done)
                               for i in range(first_index, first_index + conversations)))
        wall_s = time.perf_counter() - start
    return results, wall_s
