"""The waiting and running queues, sequence ids, the KV pool's room and the per-step token budget.

Nothing else touches the queues. Pure logic (no llama.cpp), so it is unit-tested with a fake runner
(KV operations go through a ``KvBackend``: the runner, or a fake).

Invariants:
- At most ``n_slots`` sequences run; each running sequence owns one llama.cpp sequence id (``slot``)
  of ``n_seq_ids``; ids not running belong to the prompt cache's pool entries or are free.
- The KV pool (``pool_cells``, one unified KV shared by every sequence) never overflows: each
  running sequence counts ``_need`` cells (its prompt, what it generated, and this step's headroom,
  at most ``n_ctx_seq``), every pool entry its tokens (shared cells counted twice: an
  over-estimate). Before admitting, cached entries move to RAM or go; if the running ones alone
  outgrow the pool, the last admitted is preempted: its KV is saved to host memory
  (``Sequence.swapped``) and restored when it is admitted again, at the head of the queue.
- A finished sequence's KV becomes a prompt-cache entry (``cache.PromptCache``); admission reuses
  the longest cached prefix of the sequence's namespace (API key + cache salt), from the pool or
  from RAM, and prefills the rest. A pool entry used whole, or the pool's next victim when no id
  is free, hands its own id over trimmed to the prefix (``PromptCache.take``; a victim's whole
  tokens still go to RAM) instead of being copied.
- Admission is cache-aware without starvation: among the first ``lookahead`` waiting sequences
  the one with the fewest tokens left to compute goes first (among those one prefill chunk
  completes, the one with the shortest prompt: the conversation furthest behind, whose turns
  still to come would otherwise run at the end in a narrow batch), unless the oldest waiting
  sequence was already passed over ``max_bypass`` times while it was the oldest; then it goes
  first. So a sequence waits at most ``max_bypass + 1`` admissions per sequence ahead of it, and
  a follow-up turn whose history is cached does not queue behind every first turn that arrived
  before it.
  Except at the end of a backlog: when at most ``last_cold`` (3/4 of the slots) of the waiting
  sequences are mostly uncached (new conversations), the one of them with the fewest tokens left
  goes first. Held back longer, a new conversation's every turn would come after the others had
  finished, in a batch running ever narrower (a closed-loop multi-turn run ended with 3-5 of 8
  slots busy for its last ~8 s; ``benchmarks/admission_sim.py``).
- Every step decodes one token for every running sequence past its prompt; prompts are prefilled in
  chunks from what remains of the ``max_batch_tokens`` budget, at most ``prefill_chunk + 1``
  tokens per step while other sequences are decoding (or, for a prompt's end, its last
  ``2 x prefill_chunk + 1``: a short tail chunk costs more a token, ``benchmarks/mixed_step.py``),
  so a long prompt never stalls running streams. Meanwhile every other prefilling sequence
  computes one prompt token a step (``_plan_prefill``). While a sequence waits for a slot (a
  backlog), the chunk is ``backlog_chunk`` instead: the server is then bound by throughput, and
  a prompt in few large chunks costs less than in many small ones (fewer calls, steps in which
  its slot yields nothing, prompt tokens in the decode ubatch; multi-turn load, 24
  conversations on 8 slots: 256 gave 1.07-1.14x the tok/s of 64, at an ITL p99 of ~1.2 s
  instead of ~0.4 s, ``benchmarks/RESULTS.md``).
- A prompt sharing at least ``min_share`` more tokens with a running sequence's prompt (same
  namespace) than with the cache (concurrent requests with one system prompt, ``n`` choices) does
  not recompute them: it waits until that sequence has computed them, then its slot gets a copy of the other's
  KV trimmed to the shared prefix (``StepPlan.copies``). Sources are always admitted earlier, so
  waits cannot form a cycle; a source that leaves first just means a normal prefill.
- KV is reused only as far as the runner can keep it (``kv_keep``): a memory that refuses a
  partial removal (sliding-window layers that already dropped cells the next token attends to,
  recurrent state) keeps nothing, and the sequence prefills from 0. When a trim after rejected
  drafts is refused, ``kv_lost`` makes the sequence recompute everything it holds as prefill
  (``Sequence.prefill_end``) before it decodes again.
- Sequences leave at once: cancelled ones are removed at the start of the next ``schedule()``.
- With ``close_gaps`` (a KV stream per id), running sequences' ids do not keep a gap for long
  while nothing waits: after ``gap_patience`` such steps the fewest of them move into the gaps,
  their cells copied at once (``_close_gaps``, ``ferry.engine.gaps``); a sequence's id is
  otherwise fixed while it runs.
- Drafts (speculative tokens from ``Sequence.drafter``) ride on a decoding sequence's token or on
  the prompt's last chunk, only from the budget the step's one-token-per-sequence work leaves,
  and never past what the sequence may still generate or hold.
- An image span (``Sequence.images``) is never split: it is one Work item (``image`` set) of its
  own, scheduled when it fits the step's budget or is the step's first prefill item (so it always
  progresses; the runner decodes it in a batch of its own). Prefix reuse stops at a prompt's first
  image: a finished sequence is cached only up to there, and admission never reuses past it
  (placeholder ids say nothing about which image was decoded).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.engine.cache.index import common_prefix
from ferry.engine.cache.store import KvBackend, PromptCache, Tier
from ferry.engine.gaps import plan_moves, runs
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
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (from slot, to slot, n)
    cancelled: list[Sequence] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)  # waited longer than queue_timeout
    preempted: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, id it left)
    failed: list[Sequence] = field(default_factory=list)  # could not be resumed (KV restore)

    @property
    def num_tokens(self) -> int:
        return sum(len(w.tokens) for w in self.work)


@dataclass(slots=True)
class Stats:
    prefix_hits: int = 0
    prefix_cached_tokens: int = 0
    moves: int = 0  # running sequences moved to another id to close a gap (ferry.engine.gaps)


class _PlanOnly:
    """A KvBackend that holds no KV (the scheduler's own unit tests; dry runs)."""

    bytes_per_cell = 1

    def trim(self, seq_id: int, keep: int) -> int:
        return keep

    def copy(self, src: int, dst: int, n: int) -> None:
        pass

    def save(self, seq_id: int) -> bytes:
        return b""

    def restore(self, blob: object, seq_id: int) -> bool:
        return True


class Scheduler:
    def __init__(self, n_slots: int, max_batch_tokens: int, prefill_chunk: int,
                 queue_timeout: float | None = None, n_ctx_seq: int = 1 << 30,
                 min_share: int = 16, *, kv: KvBackend | None = None,
                 n_seq_ids: int | None = None, pool_cells: int | None = None,
                 ram_budget: int = 0, min_restore: int = 32, headroom: int = 65,
                 max_bypass: int | None = None, last_cold: int | None = None,
                 lookahead: int = 256,
                 kv_keep: Callable[[int, int], int] | None = None, close_gaps: bool = False,
                 gap_patience: int = 8, backlog_chunk: int | None = None) -> None:
        self.min_share = min_share
        # close_gaps: the KV has a stream per id (a batch is cut at gaps in its ids); a gap that
        # lasted gap_patience steps with nothing waiting is closed (_close_gaps)
        self.close_gaps = close_gaps
        self.gap_patience = gap_patience
        self._gapped = 0
        # kv_keep(slot, n): how many of the slot's first n KV cells can be kept (n, or fewer when
        # the memory refuses the partial removal); Runner.keepable. None: always n.
        self.kv_keep = kv_keep
        self.n_ctx_seq = n_ctx_seq
        self.n_slots = n_slots
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        # the chunk beside decodes while a sequence waits for a slot (None: prefill_chunk)
        self.backlog_chunk = prefill_chunk if backlog_chunk is None else backlog_chunk
        self.queue_timeout = queue_timeout
        self.pool_cells = pool_cells if pool_cells is not None else 1 << 40
        self.headroom = headroom
        self.max_bypass = 2 * n_slots if max_bypass is None else max_bypass
        # at most this many mostly uncached sequences waiting: they go before cached ones
        self.last_cold = 3 * n_slots // 4 if last_cold is None else last_cold
        self.lookahead = lookahead
        self.kv: KvBackend = kv if kv is not None else _PlanOnly()
        self.cache = PromptCache(self.kv, ram_budget, min_restore, keep=self._keep)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # ids not running and not a pool entry's; _take_id hands out the lowest
        self.free_ids: list[int] = list(range(max(n_seq_ids or 2 * n_slots, n_slots)))
        self.n_seq_ids = len(self.free_ids)
        self.stats = Stats()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_free_slots(self) -> int:
        return self.n_slots - len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def cells_used(self) -> int:
        """KV cells counted against the pool (an over-estimate when cells are shared)."""
        return sum(self._need(s) for s in self.running) + self.cache.pool_cells

    def schedule(self, now: float = 0.0) -> StepPlan:
        plan = StepPlan()
        self._drop_cancelled(plan)
        self._expire_waiting(plan, now)
        self._fit_running(plan)
        self._admit(plan)
        if self.close_gaps:
            self._close_gaps()
        budget = self.max_batch_tokens
        decoding = [s for s in self.running if not s.in_prefill]
        spare = budget - len(decoding)  # drafts only use what one token per sequence leaves
        for seq in decoding:
            draft = self._draft(seq, seq.num_computed + 1, spare)
            spare -= len(draft)
            plan.work.append(Work(seq, [seq.generated[-1], *draft], seq.num_computed, True, draft))
            budget -= 1 + len(draft)
        if decoding:  # the runner decodes a chunk's last token beside the decodes (see below)
            chunk = self.backlog_chunk if self.waiting else self.prefill_chunk
            self._plan_prefill(plan, budget, chunk + 1, fill=True)
        else:
            self._plan_prefill(plan, budget, budget, fill=False)
        return plan

    def _plan_prefill(self, plan: StepPlan, budget: int, chunk_cap: int, fill: bool) -> None:
        """Prompt chunks from ``budget``, at most ``chunk_cap`` tokens in all. With ``fill`` (others
        decode), a prefilling sequence the cap leaves out still computes its next prompt token: the
        runner decodes the last token of every item beside the decodes, so every running id is in
        that one ubatch (llama.cpp cuts a batch over separate streams at a gap in the ids: a hole
        cost ~7 ms a step, a token there ~4 ms, ``benchmarks/mixed_step.py --holes``)."""
        chunk = chunk_cap
        first = True
        for seq in self.running:
            if budget <= 0:
                break
            if not seq.in_prefill or not self._take_share(seq, plan):
                continue
            pos = seq.num_computed
            image = seq.image_at(pos)
            if chunk_cap <= 0:
                if fill and image is None:
                    self._plan_chunk(plan, seq, pos, 1, budget)
                    budget -= 1
                continue
            if image is not None:
                if image.n_tokens > budget and not first:
                    continue  # never split an image; it goes first in a later step
                n = image.n_tokens
                plan.work.append(Work(seq, seq.prompt[pos:pos + n], pos, False, image=image))
                budget -= n
            else:
                left = seq.text_until(pos) - pos
                n = min(left, chunk_cap, budget)
                if n < left <= budget and left - n < chunk:
                    n = left  # no short tail for a later step: it costs more a token (below 64)
                budget -= n + self._plan_chunk(plan, seq, pos, n, budget - n)
            first = False
            chunk_cap -= n

    def _plan_chunk(self, plan: StepPlan, seq: Sequence, pos: int, n: int, spare: int) -> int:
        """Plan ``seq``'s prompt tokens ``pos .. pos + n``; the prompt's last chunk may carry a
        draft of the first tokens (verified as usual). Returns the draft's length."""
        done = pos + n == seq.prefill_end
        draft = self._draft(seq, pos + n, spare) if done else []
        plan.work.append(Work(seq, seq.tokens_at(pos, n) + draft, pos, done, draft))
        return len(draft)

    def _take_share(self, seq: Sequence, plan: StepPlan) -> bool:
        """False while ``seq`` waits for its source to compute the shared prefix; once it has,
        plan the copy and let ``seq`` prefill from there."""
        if seq.share_from is None:
            return True
        src, n = seq.share_from
        if src.status is Status.RUNNING and src.num_computed < n:
            return False
        seq.share_from = None
        if src.status is not Status.RUNNING or n <= seq.num_computed:
            return True
        assert src.slot is not None and seq.slot is not None  # running sequences own slots
        if self._keep(src.slot, n) == n:
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
        room = min(seq.max_tokens - len(seq.generated) - 1, self.n_ctx_seq - pos - 1, spare,
                   self.headroom - 1)
        return seq.drafter.propose()[:max(room, 0)]

    def _keep(self, slot: int, n: int) -> int:
        return n if self.kv_keep is None or n <= 0 else self.kv_keep(slot, n)

    def kv_lost(self, seq: Sequence, kept: int) -> None:
        """The runner kept only ``kept`` of ``seq``'s KV cells (a refused partial removal, e.g.
        after rejected drafts): recompute the rest of its tokens as prefill, then decode on."""
        seq.num_computed = kept
        seq.prefill_end = max(seq.prefill_end, len(seq.prompt) + len(seq.generated))

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence (any state); its KV becomes a prompt-cache entry."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
            seq.swapped = None
        else:
            self.running.remove(seq)
            self._release(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        assert seq.slot is not None
        tokens = seq.all_tokens[: min(_reuse_end(seq), seq.num_computed)]
        self.free_ids += self.cache.insert(seq.cache_ns, tokens, seq.slot)
        seq.slot = None

    def _drop_cancelled(self, plan: StepPlan) -> None:
        for seq in [s for s in self.waiting if s.cancelled] + [s for s in self.running if s.cancelled]:
            self.finish(seq, "cancelled")
            plan.cancelled.append(seq)

    def _expire_waiting(self, plan: StepPlan, now: float) -> None:
        if self.queue_timeout is None:
            return
        for seq in [s for s in self.waiting
                    if now - s.arrival > self.queue_timeout and s.swapped is None]:
            self.finish(seq, "queue_timeout")
            plan.expired.append(seq)

    def _need(self, seq: Sequence) -> int:
        return min(len(seq.prompt) + len(seq.generated) + self.headroom, self.n_ctx_seq)

    def _fit_running(self, plan: StepPlan) -> None:
        """Make room for this step's growth: cached entries leave the pool first, then the last
        admitted running sequences are preempted (swapped out to host memory)."""
        while self.cells_used() > self.pool_cells:
            freed = self.cache.evict_pool()
            if freed:
                self.free_ids += freed
                continue
            if len(self.running) <= 1:
                break  # alone, a sequence always fits: _need <= n_ctx_seq <= pool
            seq = self.running[-1]
            slot = seq.slot
            assert slot is not None
            seq.swapped = self.kv.save(slot)
            if seq.swapped is None:  # llama.cpp could not save it: it cannot go on
                seq.num_computed = 0
                self.finish(seq, "error")
                plan.failed.append(seq)
                continue
            self.running.pop()
            self.kv.trim(slot, 0)
            self.free_ids.append(slot)
            seq.slot, seq.status = None, Status.WAITING
            self.waiting.appendleft(seq)
            plan.preempted.append((seq, slot))

    def _admit(self, plan: StepPlan) -> None:
        while self.waiting and len(self.running) < self.n_slots:
            seq, entry, k = self._pick()
            if sum(self._need(s) for s in self.running) + self._need(seq) > self.pool_cells:
                break  # wait until running sequences leave room
            taken = None
            if (seq.swapped is None and entry is not None and k > 0 and entry.tier is Tier.POOL
                    and (k == len(entry.tokens)
                         or (not self.free_ids and entry is self.cache.next_victim()))):
                # the entry's own id keeps the prefix: no copy (and no restore from RAM when the
                # id would have been evicted for this sequence anyway)
                taken = self.cache.take(entry, k)
            if taken is None and not self.free_ids:
                # an id from the pool's LRU entry, sparing the one to reuse
                self.free_ids += self.cache.evict_pool(spare=entry) or self.cache.evict_pool()
                if not self.free_ids:
                    break
            self.waiting.remove(seq)
            seq.slot = self._take_id() if taken is None else taken[0]
            seq.status = Status.RUNNING
            self.running.append(seq)
            while self.cells_used() > self.pool_cells:  # room first: a restore needs free cells
                freed = self.cache.evict_pool(spare=entry) or self.cache.evict_pool()
                if not freed:
                    break
                self.free_ids += freed
            if seq.swapped is not None:
                self._resume(seq, plan)
            elif taken is not None:
                self._reused(seq, taken[1])
            else:
                self._reuse(seq, entry, k)

    def _close_gaps(self) -> None:
        """Once the running sequences' ids have had a gap for ``gap_patience`` steps in a row
        while nothing waited for an id and every one of them decoded, move the fewest of them
        into the gaps (``gaps.plan_moves``): a batch over separate KV streams decodes as one
        ubatch per run of consecutive ids. A free id is taken as is; a pool entry's id sends the
        entry to RAM first, as an eviction would. The patience leaves alone the gap a finished
        turn leaves until its follow-up comes back to the same id. A sequence with fewer tokens
        left to generate than the patience is not worth the copy."""
        ids = [s.slot for s in self.running if s.slot is not None]
        if self.waiting or runs(ids) < 2 or any(s.in_prefill for s in self.running):
            self._gapped = 0
            return
        self._gapped += 1
        if self._gapped < self.gap_patience:
            return
        self._gapped = 0
        by_slot = {s.slot: s for s in self.running}
        for src, dst in plan_moves(ids, self.n_seq_ids):
            seq = by_slot[src]
            if seq.max_tokens - len(seq.generated) < self.gap_patience:
                continue
            if dst in self.free_ids:
                self.free_ids.remove(dst)
            else:
                self.cache.evict_id(dst)
            self.kv.copy(src, dst, seq.num_computed)
            self.kv.trim(src, 0)
            self.free_ids.append(src)
            seq.slot = dst
            self.stats.moves += 1

    def _take_id(self) -> int:
        """The lowest free id: running sequences stay on consecutive ids, which llama.cpp decodes
        in one ubatch (see ferry.engine.runner)."""
        return self.free_ids.pop(self.free_ids.index(min(self.free_ids)))

    def _pick(self):
        """The next sequence to admit, with its best cache entry and usable prefix length."""
        head = self.waiting[0]
        if head.swapped is not None or head.bypassed >= self.max_bypass:
            return (head, *self._lookup(head))
        best = cold = None
        best_key, cold_left = (0, 0), 0
        n_cold = 0
        for i, seq in enumerate(self.waiting):
            if i >= self.lookahead:
                break
            entry, k = self._lookup(seq)
            left = len(seq.prompt) - k
            # one chunk computes it: the shortest history first (the conversation furthest
            # behind, with the most turns to come: it keeps conversations in step)
            key = (0, len(seq.prompt)) if left <= self.prefill_chunk else (1, left)
            if best is None or key < best_key:
                best, best_key = (seq, entry, k), key
            if 2 * k < len(seq.prompt):  # mostly uncached: a new conversation's first turn
                n_cold += 1
                if cold is None or left < cold_left:
                    cold, cold_left = (seq, entry, k), left
        assert best is not None
        if cold is not None and n_cold <= self.last_cold:
            best = cold
        if best[0] is not head:
            # only the oldest counts: were every sequence passed over counted, a long queue
            # would reach the bound all at once and admission turn into arrival order for
            # everyone behind it (64 conversations on 8 slots: follow-ups waited behind every
            # first turn, benchmarks/admission_sim.py)
            head.bypassed += 1
        return best

    def _lookup(self, seq: Sequence):
        entry, n = self.cache.lookup(seq.cache_ns, seq.prompt)
        # always compute >= 1 prompt token to get logits
        return entry, min(n, len(seq.prompt) - 1, _reuse_end(seq))

    def _reuse(self, seq: Sequence, entry, k: int) -> None:
        assert seq.slot is not None
        if entry is not None and entry.id not in self.cache.entries:
            entry, k = self._lookup(seq)  # making room pushed it out of RAM
        if entry is not None and k > 0:
            k, freed = self.cache.materialize(entry, k, seq.slot)
            self.free_ids += freed
        else:
            k = 0
        self._reused(seq, k)

    def _reused(self, seq: Sequence, k: int) -> None:
        """``seq``'s slot holds its first ``k`` prompt tokens' KV: count the hit, and plan to
        share a longer prefix from a running sequence if one is computing it."""
        seq.num_computed = seq.num_cached = k
        if k > 0:
            self.stats.prefix_hits += 1
            self.stats.prefix_cached_tokens += k
        src, n = self._best_running(seq)
        if src is not None and n >= k + self.min_share:
            seq.share_from = (src, n)

    def _resume(self, seq: Sequence, plan: StepPlan) -> None:
        """A preempted sequence gets its KV back (its state is otherwise intact)."""
        assert seq.slot is not None
        blob, seq.swapped = seq.swapped, None
        if not self.kv.restore(blob, seq.slot):
            seq.num_computed = 0  # nothing of it is in KV: nothing to cache
            self.finish(seq, "error")
            plan.failed.append(seq)

    def _best_running(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence of ``seq``'s namespace whose prompt shares the longest prefix with
        ``seq``'s (before either's first image, and short of ``seq``'s last token, which must be
        computed)."""
        limit = min(_reuse_end(seq), len(seq.prompt) - 1)
        best, best_n = None, 0
        for other in self.running:
            if other is seq or other.cache_ns != seq.cache_ns:
                continue
            n = min(common_prefix(other.prompt, seq.prompt), limit, _reuse_end(other))
            if n > best_n:
                best, best_n = other, n
        return best, best_n


def _reuse_end(seq: Sequence) -> int:
    """KV from this position on never serves another sequence: the first image's start (its
    placeholder ids do not say which image was decoded), else no bound."""
    return seq.images[0].start if seq.images else sys.maxsize
