"""The waiting and running queues, slot assignment, prefix reuse and the per-step token budget.

Nothing else touches the queues. Pure logic (no llama.cpp), so it is unit-tested with a fake runner.

Invariants:
- At most ``n_slots`` sequences run; each running sequence owns exactly one slot (a llama.cpp
  sequence id with its own KV stream of ``n_ctx_seq`` cells), so the KV cache can never overflow.
- A released slot keeps the tokens it holds in KV as a reusable prefix (``slot_tokens``) until it is
  given to another sequence; admission prefers the free slot with the longest common prefix, and the
  runner trims the slot's KV to that prefix (``StepPlan.trims``) before the step's decode.
- Every step decodes one token for every running sequence past its prompt; prompts are prefilled in
  chunks from what remains of the ``max_batch_tokens`` budget, at most ``prefill_chunk`` tokens per
  step while other sequences are decoding, so a long prompt never stalls running streams.
- A prompt sharing at least ``min_share`` more tokens with a running sequence's prompt than with
  any free slot (concurrent requests with one system prompt, ``n`` choices) does not recompute
  them: it waits until that sequence has computed them, then its slot gets a copy of the other's
  KV trimmed to the shared prefix (``StepPlan.copies``). Sources are always admitted earlier, so
  waits cannot form a cycle; a source that leaves first just means a normal prefill.
- A slot's KV is reused only as far as the runner can keep it (``kv_keep``): a memory that
  refuses a partial removal (sliding-window layers that already dropped cells the next token
  attends to, recurrent state) keeps nothing, and the sequence prefills from 0. When a trim after
  rejected drafts is refused, ``kv_lost`` makes the sequence recompute everything it holds as
  prefill (``Sequence.prefill_end``) before it decodes again.
- Sequences leave at once: cancelled ones are removed at the start of the next ``schedule()``.
- Drafts (speculative tokens from ``Sequence.drafter``) ride on a decoding sequence's token or on
  the prompt's last chunk, only from the budget the step's one-token-per-sequence work leaves,
  and never past what the sequence may still generate or hold.
- An image span (``Sequence.images``) is never split: it is one Work item (``image`` set) of its
  own, scheduled when it fits the step's budget or is the step's first prefill item (so it always
  progresses; the runner decodes it in a batch of its own). Prefix reuse stops at a prompt's first
  image: a released slot keeps its tokens only up to there, and admission never reuses past it
  (placeholder ids say nothing about which image was decoded).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.engine.sequence import ImageSpan, Sequence, Status


@dataclass(slots=True)
class Work:
    seq: Sequence
    tokens: list[int]
    pos: int  # position of tokens[0] in the sequence
    logits: bool  # the last token's logits are needed (decode, or the prompt's last chunk)
    draft: list[int] = field(default_factory=list)  # speculative tokens (the tail of `tokens`)
    image: ImageSpan | None = None  # `tokens` are this image's placeholders; decode its embeddings

    @property
    def n_logits(self) -> int:
        """Rows of logits this work needs: the last token's, plus one per drafted token."""
        return (1 + len(self.draft)) if self.logits else 0


@dataclass(slots=True)
class StepPlan:
    work: list[Work] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)  # (slot, keep first n cells)
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (from slot, to slot, n)
    cancelled: list[Sequence] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)  # waited longer than queue_timeout

    @property
    def num_tokens(self) -> int:
        return sum(len(w.tokens) for w in self.work)


@dataclass(slots=True)
class Stats:
    prefix_hits: int = 0
    prefix_cached_tokens: int = 0


class Scheduler:
    def __init__(self, n_slots: int, max_batch_tokens: int, prefill_chunk: int,
                 queue_timeout: float | None = None, n_ctx_seq: int = 1 << 30,
                 min_share: int = 16, kv_keep: Callable[[int, int], int] | None = None) -> None:
        self.min_share = min_share
        # kv_keep(slot, n): how many of the slot's first n KV cells can be kept (n, or fewer when
        # the memory refuses the partial removal); Runner.keepable. None: always n.
        self.kv_keep = kv_keep
        self.n_ctx_seq = n_ctx_seq
        self.n_slots = n_slots
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.queue_timeout = queue_timeout
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(n_slots))
        self.slot_tokens: list[list[int]] = [[] for _ in range(n_slots)]
        self._slot_age = [0] * n_slots
        self._clock = 0
        self.stats = Stats()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self, now: float = 0.0) -> StepPlan:
        plan = StepPlan()
        self._drop_cancelled(plan)
        self._expire_waiting(plan, now)
        self._admit(plan)
        budget = self.max_batch_tokens
        decoding = [s for s in self.running if not s.in_prefill]
        spare = budget - len(decoding)  # drafts only use what one token per sequence leaves
        for seq in decoding:
            draft = self._draft(seq, seq.num_computed + 1, spare)
            spare -= len(draft)
            plan.work.append(Work(seq, [seq.generated[-1], *draft], seq.num_computed, True, draft))
            budget -= 1 + len(draft)
        chunk_cap = self.prefill_chunk if decoding else budget
        first = True
        for seq in self.running:
            if budget <= 0:
                break
            if not seq.in_prefill or not self._take_share(seq, plan):
                continue
            pos = seq.num_computed
            image = seq.image_at(pos)
            if image is not None:
                if image.n_tokens > budget and not first:
                    continue  # never split an image; it goes first in a later step
                n = image.n_tokens
                plan.work.append(Work(seq, seq.prompt[pos:pos + n], pos, False, image=image))
                budget -= n
            else:
                n = min(seq.text_until(pos) - pos, chunk_cap, budget)
                done = pos + n == seq.prefill_end
                # the prompt's last chunk may carry a draft of the first tokens (verified as usual)
                draft = self._draft(seq, pos + n, budget - n) if done else []
                plan.work.append(Work(seq, seq.tokens_at(pos, n) + draft, pos, done, draft))
                budget -= n + len(draft)
            first = False
            chunk_cap -= n
            if chunk_cap <= 0:
                break
        return plan

    def _take_share(self, seq: Sequence, plan: StepPlan) -> bool:
        """False while ``seq`` waits for its source to compute the shared prefix; once it has,
        plan the copy and let ``seq`` prefill from there."""
        if seq.share_from is None:
            return True
        src, n = seq.share_from
        if src.status is Status.RUNNING and src.num_computed < n:
            return False
        seq.share_from = None
        if src.status is Status.RUNNING and n > seq.num_computed and self._keep(src.slot, n) == n:
            plan.copies.append((src.slot, seq.slot, n))
            self.stats.prefix_hits += seq.num_cached == 0
            self.stats.prefix_cached_tokens += n - seq.num_cached
            seq.num_computed = seq.num_cached = n
        return True

    def _draft(self, seq: Sequence, pos: int, spare: int) -> list[int]:
        """Speculative tokens for ``seq`` to decode from position ``pos`` on, capped by what it may
        still generate and hold, and by the ``spare`` batch budget."""
        if seq.drafter is None or spare <= 0:
            return []
        room = min(seq.max_tokens - len(seq.generated) - 1, self.n_ctx_seq - pos - 1, spare)
        return seq.drafter.propose()[:max(room, 0)]

    def _keep(self, slot: int, n: int) -> int:
        return n if self.kv_keep is None or n <= 0 else self.kv_keep(slot, n)

    def kv_lost(self, seq: Sequence, kept: int) -> None:
        """The runner kept only ``kept`` of ``seq``'s KV cells (a refused partial removal, e.g.
        after rejected drafts): recompute the rest of its tokens as prefill, then decode on."""
        seq.num_computed = kept
        seq.prefill_end = max(seq.prefill_end, len(seq.prompt) + len(seq.generated))

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence (any state) and release its slot, keeping its KV as a prefix."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            self._release(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        slot = seq.slot
        assert slot is not None
        self.slot_tokens[slot] = seq.all_tokens[: min(_reuse_end(seq), seq.num_computed)]
        self._clock += 1
        self._slot_age[slot] = self._clock
        self.free_slots.append(slot)
        seq.slot = None

    def _drop_cancelled(self, plan: StepPlan) -> None:
        for seq in [s for s in self.waiting if s.cancelled] + [s for s in self.running if s.cancelled]:
            self.finish(seq, "cancelled")
            plan.cancelled.append(seq)

    def _expire_waiting(self, plan: StepPlan, now: float) -> None:
        if self.queue_timeout is None:
            return
        for seq in [s for s in self.waiting if now - s.arrival > self.queue_timeout]:
            self.finish(seq, "queue_timeout")
            plan.expired.append(seq)

    def _admit(self, plan: StepPlan) -> None:
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            slot, k = self._best_slot(seq.prompt)
            self.free_slots.remove(slot)
            # always compute >= 1 prompt token to get logits
            k = self._keep(slot, min(k, len(seq.prompt) - 1, _reuse_end(seq)))
            plan.trims.append((slot, k))
            self.slot_tokens[slot] = self.slot_tokens[slot][:k]
            seq.slot = slot
            seq.num_computed = k
            seq.num_cached = k
            if k > 0:
                self.stats.prefix_hits += 1
                self.stats.prefix_cached_tokens += k
            src, n = self._best_running(seq)
            if n >= k + self.min_share:
                seq.share_from = (src, n)
            seq.status = Status.RUNNING
            self.running.append(seq)

    def _best_running(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence whose prompt shares the longest prefix with ``seq``'s (before
        either's first image, and short of ``seq``'s last token, which must be computed)."""
        limit = min(_reuse_end(seq), len(seq.prompt) - 1)
        best, best_n = None, 0
        for other in self.running:
            n = min(_common_prefix(other.prompt, seq.prompt), limit, _reuse_end(other))
            if n > best_n:
                best, best_n = other, n
        return best, best_n

    def _best_slot(self, prompt: list[int]) -> tuple[int, int]:
        best, best_k = None, -1
        for slot in self.free_slots:
            k = _common_prefix(self.slot_tokens[slot], prompt)
            if k > best_k or (k == best_k and self._slot_age[slot] < self._slot_age[best]):
                best, best_k = slot, k
        assert best is not None
        return best, best_k


def _reuse_end(seq: Sequence) -> int:
    """KV from this position on never serves another sequence: the first image's start (its
    placeholder ids do not say which image was decoded), else no bound."""
    return seq.images[0].start if seq.images else sys.maxsize


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix, by bisection over slice comparisons (done in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
