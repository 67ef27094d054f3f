"""One request's sequences in the engine, seen from asyncio.

Invariants:
- ``outputs()`` yields ``(choice_index, Output)`` in engine order and ends after every sequence
  has delivered its final Output; ``cancel()`` (idempotent) makes that happen within one step.
- Leaving ``outputs()`` early (the consumer was cancelled or closed) cancels the sequences.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from ferry.engine.engine import Engine
from ferry.engine.sequence import ImageSpan, Output, SamplingParams, Sequence
from ferry.errors import FerryError, InternalError, QueueTimeout


class Generation:
    def __init__(self, engine: Engine, prompts: list[list[int]], params: SamplingParams, n: int,
                 max_tokens: list[int], images: tuple[ImageSpan, ...] = (),
                 cache_ns: str = "") -> None:
        """``images``: embedding spans of the (single) prompt, for chats with images.
        ``cache_ns``: prompt-cache namespace (``ferry.engine.cache.namespace``)."""
        self.engine = engine
        self._q: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()
        self.seqs: list[Sequence] = []
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.drafted_tokens = self.accepted_tokens = 0  # speculative decoding
        self.stop_sequences: dict[int, str] = {}  # choice index -> the stop string that ended it
        try:
            for i, prompt in enumerate(prompts):
                for j in range(n):
                    p = params
                    if n > 1:
                        seed = None if params.seed is None else params.seed + j
                        p = dataclasses.replace(params, seed=seed,
                                                logit_bias=dict(params.logit_bias))
                    idx = i * n + j
                    self.seqs.append(engine.submit(prompt, p, max_tokens[i], self._sink(idx),
                                                   images, cache_ns))
        except FerryError:
            self.cancel()
            raise
        self._open = len(self.seqs)

    def _sink(self, idx: int) -> Callable[[Output], None]:
        """Where the engine delivers choice ``idx``'s outputs."""
        return lambda o: self._q.put_nowait((idx, o))

    def cancel(self) -> None:
        for s in self.seqs:
            if not s.cancelled:
                self.engine.cancel(s)

    async def outputs(self) -> AsyncIterator[tuple[int, Output]]:
        try:
            while self._open:
                idx, out = await self._q.get()
                if out.finish_reason is not None:
                    self._open -= 1
                    self.completion_tokens += out.num_completion_tokens
                    self.cached_tokens += out.num_cached_tokens
                    self.drafted_tokens += out.num_drafted_tokens
                    self.accepted_tokens += out.num_accepted_tokens
                    if out.stop_sequence is not None:
                        self.stop_sequences[idx] = out.stop_sequence
                    if out.finish_reason == "queue_timeout":
                        raise QueueTimeout("the request waited in the queue longer than the "
                                           "queue timeout")
                    if out.finish_reason == "error":
                        raise InternalError(out.error or "generation failed")
                yield idx, out
        finally:
            if self._open:
                self.cancel()

    def usage(self) -> dict:
        """OpenAI usage. Speculative drafts are reported in the spec's prediction fields:
        ``accepted_prediction_tokens`` drafted tokens that were kept, ``rejected_prediction_tokens``
        those that were not (present only when the request speculated)."""
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if self.drafted_tokens:
            usage["completion_tokens_details"] = {
                "accepted_prediction_tokens": self.accepted_tokens,
                "rejected_prediction_tokens": self.drafted_tokens - self.accepted_tokens}
        return usage
