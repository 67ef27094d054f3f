"""The only place that decodes: one llama.cpp context, one batch, one ``llama_decode`` per step.

Invariants:
- Called from the engine thread only (llama.cpp contexts are not thread-safe).
- Slot ``i`` is llama.cpp sequence id ``i`` with its own KV stream (``kv_unified = False``), so
  attention for one sequence never scans another's cells.
- ``plan.copies`` copy one slot's whole KV stream into another (llama.cpp copies across streams
  only whole, at the start of the next decode, as llama-server does for ``n`` > 1) and trim it to
  the shared prefix; ``run`` always decodes after planning a copy (the copying sequence has at
  least its last prompt token to compute).
- ``run(plan)`` returns, per sequence that asked for logits, the index of its row in the logits
  buffer; those rows stay valid until the next ``run``.
- Image work (``Work.image``, embeddings from a multimodal projector) is decoded first, one image
  per ``llama_decode`` with an embeddings batch (the whole image in one ubatch, never asking for
  logits), then the step's token batch. A non-causal image switches causal attention off for its
  own decode only.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import llama_cpp as ll
import numpy as np

from ferry.engine.model import Model
from ferry.engine.scheduler import StepPlan, Work

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    n_ctx: int
    n_slots: int
    n_threads: int
    n_batch: int


class DecodeError(RuntimeError):
    pass


class Runner:
    def __init__(self, model: Model, cfg: RunnerConfig) -> None:
        self.model = model
        p = ll.llama_context_default_params()
        p.n_ctx = cfg.n_ctx
        p.n_batch = cfg.n_batch
        p.n_ubatch = cfg.n_batch
        p.n_seq_max = cfg.n_slots
        p.n_threads = cfg.n_threads
        p.n_threads_batch = cfg.n_threads
        p.kv_unified = False
        p.no_perf = True
        self.ctx = ll.llama_init_from_model(model.ptr, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_ctx_seq: int = ll.llama_n_ctx_seq(self.ctx)
        self.n_batch = cfg.n_batch
        self.n_vocab = model.n_vocab
        self.batch = ll.llama_batch_init(cfg.n_batch, 0, 1)
        # Pre-bind the batch arrays: attribute lookups on ctypes structs are slow in the hot loop.
        self._tok = self.batch.token
        self._pos = self.batch.pos
        self._nseq = self.batch.n_seq_id
        self._seq = self.batch.seq_id
        self._lg = self.batch.logits
        self._embd_batch: ll.llama_batch | None = None  # made on the first image

    def _decode_image(self, w: Work) -> None:
        image = w.image
        assert image is not None and w.seq.slot is not None
        n, n_embd = image.embd.shape  # embd: [n_tokens, n_embd] float32
        if n > self.n_batch:
            raise DecodeError(f"an image of {n} tokens does not fit one batch of {self.n_batch}")
        if self._embd_batch is None:
            self._embd_batch = ll.llama_batch_init(self.n_batch, self.model.n_embd, 1)
        b = self._embd_batch
        assert n_embd == self.model.n_embd and image.embd.flags.c_contiguous
        ctypes.memmove(b.embd, image.embd.ctypes.data, image.embd.nbytes)
        for i in range(n):
            b.pos[i] = w.pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = w.seq.slot
            b.logits[i] = 0
        b.n_tokens = n
        if not image.causal:
            ll.llama_set_causal_attn(self.ctx, False)
        try:
            rc = ll.llama_decode(self.ctx, b)
        finally:
            if not image.causal:
                ll.llama_set_causal_attn(self.ctx, True)
        if rc != 0:
            raise DecodeError(f"llama_decode (image embeddings) returned {rc}")

    def trim(self, slot: int, keep: int) -> None:
        """Drop slot's KV cells from position ``keep`` on."""
        if not ll.llama_memory_seq_rm(self.mem, slot, keep, -1):
            ll.llama_memory_seq_rm(self.mem, slot, -1, -1)

    def clear_slot(self, slot: int) -> None:
        ll.llama_memory_seq_rm(self.mem, slot, -1, -1)

    def run(self, plan: StepPlan) -> dict[int, int]:
        """Decode every piece of work in one batch; return {sequence id: first logits row}
        (a work item's ``n_logits`` rows are contiguous from there)."""
        for slot, keep in plan.trims:
            self.trim(slot, keep)
        for src, dst, keep in plan.copies:  # whole-stream copy (done by this decode), then trim
            ll.llama_memory_seq_rm(self.mem, dst, -1, -1)
            ll.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
            self.trim(dst, keep)
        n = 0
        rows: dict[int, int] = {}
        tok, pos, nseq, seq, lg = self._tok, self._pos, self._nseq, self._seq, self._lg
        for w in plan.work:
            if w.image is not None:
                self._decode_image(w)
                continue
            slot = w.seq.slot
            p = w.pos
            for t in w.tokens:
                tok[n] = t
                pos[n] = p
                nseq[n] = 1
                seq[n][0] = slot
                lg[n] = 0
                n += 1
                p += 1
            k = w.n_logits
            if k:
                for i in range(n - k, n):
                    lg[i] = 1
                rows[w.seq.id] = n - k
        if n == 0:
            return rows
        self.batch.n_tokens = n
        rc = ll.llama_decode(self.ctx, self.batch)  # blocks this thread only; GIL released by ctypes
        if rc != 0:
            raise DecodeError(f"llama_decode returned {rc}")
        return rows

    def logits(self, row: int) -> np.ndarray:
        """A writable float32 view of one logits row (valid until the next run)."""
        ptr = ll.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def sample(self, sampler: ctypes.c_void_p, row: int) -> int:
        return ll.llama_sampler_sample(sampler, self.ctx, row)

    def close(self) -> None:
        if self.ctx:
            ll.llama_batch_free(self.batch)
            if self._embd_batch is not None:
                ll.llama_batch_free(self._embd_batch)
            ll.llama_free(self.ctx)
            self.ctx = None
