"""Draft-model speculation: a second GGUF with the same vocabulary proposes tokens greedily.

``DraftModel`` owns one llama.cpp context for the draft weights (a second ``Runner``); slot ``i`` of
it mirrors slot ``i`` of the target. At the start of each engine step, ``prepare`` drafts for every
speculating sequence that is past its prompt, batched across sequences: one decode catches each
draft slot up with what the target accepted since the last step, then one decode per extra draft
token. The scheduler then takes the draft through ``ModelDrafter.propose`` like an n-gram draft.

Invariants:
- Used from the engine thread only (like ``Runner``); the draft context is never touched elsewhere.
- ``ModelDrafter.kv`` is exactly the token list held in the draft slot's KV cells. Before drafting,
  the cells that disagree with the sequence's history (rejected drafts) are trimmed, and the last
  history token is always re-decoded so its logits are fresh.
- Catching up on a long prompt takes at most ``n_batch`` tokens per step over all sequences; a
  sequence still catching up gets no draft that step, so a long prompt never stalls a step.
- Drafts are greedy (a point mass), so verification by the target's own sampler is exact
  (see speculative.py).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from ferry.engine.model import Model
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import Sequence
from ferry.engine.speculative import DraftPolicy


class DraftModelMismatch(ValueError):
    """The draft model cannot draft for the target (different vocabulary)."""


class ModelDrafter:
    """One sequence's view of the draft model: its draft KV contents and its draft policy."""

    def __init__(self, max_draft: int) -> None:
        self.policy = DraftPolicy(max_draft)
        # tokens in this sequence's draft-slot KV cells, in order; None until the slot is cleared
        # of whatever the slot's previous sequence left there
        self.kv: list[int] | None = None
        self.pending: list[int] = []  # the draft made by the last prepare()

    def extend(self, tokens: list[int]) -> None:
        """History lives in the Sequence; nothing to index."""

    def propose(self) -> list[int]:
        draft, self.pending = self.pending, []
        return draft

    def record(self, drafted: int, accepted: int) -> None:
        self.policy.record(drafted, accepted)


class DraftModel:
    def __init__(self, model: Model, target: Model, cfg: RunnerConfig) -> None:
        if model.n_vocab != target.n_vocab or model.pieces != target.pieces:
            raise DraftModelMismatch(
                f"draft model {model.path} does not share the vocabulary of {target.path}")
        self.model = model
        self.runner = Runner(model, cfg)
        self.n_batch = cfg.n_batch
        self._held: dict[int, int] = {}  # draft slot -> id of the sequence whose cells it holds

    def drafter(self, max_draft: int) -> ModelDrafter:
        return ModelDrafter(max_draft)

    def prepare(self, seqs: Seq[Sequence], live: Seq[Sequence] = ()) -> None:
        """Draft for each sequence (past its prompt, with a ``ModelDrafter``) that is not paused.
        Draft slots of sequences no longer in ``live`` (the running ones) are cleared first: the
        draft context's KV pool only holds running sequences."""
        running = {(s.slot, s.id) for s in live}
        for slot, sid in list(self._held.items()):
            if (slot, sid) not in running:
                self.runner.clear_slot(slot)
                del self._held[slot]
        budget = self.n_batch
        plan = StepPlan()
        want: dict[int, tuple[Sequence, int]] = {}  # seq id -> (seq, draft length wanted)
        for seq in seqs:
            d = seq.drafter
            assert isinstance(d, ModelDrafter)  # the engine gives sequences of a draft model one
            d.pending = []
            room = min(d.policy.length, seq.max_tokens - len(seq.generated) - 1)
            if room <= 0 or d.policy.paused() or budget <= 0:
                continue
            assert seq.slot is not None  # a running sequence owns its slot
            hist = seq.all_tokens
            keep = self._sync(seq.slot, d, hist)
            self._held[seq.slot] = seq.id
            todo = hist[keep:]
            done = len(todo) <= budget
            todo = todo[:budget]
            plan.work.append(Work(seq, todo, keep, done))
            assert d.kv is not None  # _sync started it
            d.kv.extend(todo)
            budget -= len(todo)
            if done:
                want[seq.id] = (seq, room)
        while plan.work:
            rows = self.runner.run(plan)
            plan = StepPlan()
            for sid, row in rows.items():
                seq, room = want[sid]
                d = seq.drafter
                assert isinstance(d, ModelDrafter) and d.kv is not None  # synced above
                d.pending.append(int(np.argmax(self.runner.logits(row))))
                if len(d.pending) < room:  # decode the new draft token to draft the next one
                    plan.work.append(Work(seq, [d.pending[-1]], len(d.kv), True))
                    d.kv.append(d.pending[-1])

    def _sync(self, slot: int, d: ModelDrafter, hist: list[int]) -> int:
        """Trim draft slot ``slot`` to its longest prefix that agrees with ``hist``, minus at least the
        last history token (re-decoded for its logits); return how many cells are kept."""
        if d.kv is None:
            self.runner.clear_slot(slot)
            d.kv = []
        keep = 0
        n = min(len(d.kv), len(hist) - 1)
        # all but the last few cells were verified before; compare from a short way back
        start = max(0, n - 2 * d.policy.max_draft - 2)
        if d.kv[:start] == hist[:start]:
            keep = start
        while keep < n and d.kv[keep] == hist[keep]:
            keep += 1
        if keep < len(d.kv):
            keep = self.runner.trim(slot, keep)  # 0 if the draft's memory refused
            del d.kv[keep:]
        return keep

    def clear(self, slot: int) -> None:
        self.runner.clear_slot(slot)

    def close(self) -> None:
        self.runner.close()
