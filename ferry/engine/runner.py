"""The only place that decodes: one llama.cpp context, one batch, one ``llama_decode`` per step
(two when logit-free prompt chunks go ahead of the rest, see ``run``).

Invariants:
- Called from the engine thread only (llama.cpp contexts are not thread-safe).
- A sequence's slot is its llama.cpp sequence id. With ``kv_unified`` one KV pool of ``n_ctx``
  cells is shared by all ``n_seq_max`` ids, so one sequence may use the whole pool while others
  are short, and copying a prefix only tags cells. Without it (the default) each id has its own
  stream of ``n_ctx / n_seq_max`` cells, attention never scans another's cells, and a
  computation's result does not depend on where other sequences' cells lie (in a unified pool it
  does: measured up to 0.4 on a logit, enough to flip greedy choices); copies between streams go
  through the state API at once (llama.cpp defers a cross-stream copy to the next decode).
- ``plan.copies`` give one sequence the first n cells of another before the step's decode.
- The runner is the scheduler's ``KvBackend``: ``trim``, ``copy``, ``save`` and ``restore`` act on
  sequences' cells at once (save/restore: llama.cpp's per-sequence state, host memory).
- ``trim`` keeps a prefix only where the memory can continue from it (``keepable``); otherwise it
  clears the slot and says so (returns 0), so the caller recomputes. Sliding-window layers keep
  only the last ``n_swa`` + ``n_ubatch`` positions per slot (``swa_full = False``, as in
  llama-server): a trim to a position whose window was already overwritten keeps nothing.
  Recurrent and hybrid memories cannot drop a tail at all. ``run`` checks the plan's copies
  against this (the scheduler asked ``keepable`` when it planned them).
- The batch holds its tokens in increasing sequence id order. With separate streams llama.cpp
  cuts a batch into ubatches of *consecutive* ids (``split_equal`` sequential), so a batch in
  admission order decodes as several small graphs: a batch-8 decode step measured 50 ms in id
  order, 73 ms shuffled and 97 ms reversed (``benchmarks/batch_order.py``).
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
import os
from dataclasses import dataclass, field

import llama_cpp as ll
import numpy as np

from ferry.engine.hardware import Placement
from ferry.engine.model import Model
from ferry.engine.scheduler import StepPlan, Work

log = logging.getLogger(__name__)


# llama_get_logits_ith returning the address itself (the key of Runner._views), called without
# releasing the GIL: it only looks up a pointer (no difference measured either way)
_LOGITS_ITH = ctypes.PYFUNCTYPE(ctypes.c_void_p, ll.llama_context_p_ctypes, ctypes.c_int32)(
    ("llama_get_logits_ith", ll.llama_cpp._lib))


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    n_ctx: int
    n_slots: int
    n_threads: int
    n_batch: int
    placement: Placement = field(default_factory=Placement)  # flash attention, KV-cache types
    n_seq_max: int = 0  # llama.cpp sequence ids (0: n_slots)
    kv_unified: bool = False  # one KV pool shared by all sequence ids


class DecodeError(RuntimeError):
    pass


LLAMA_MAX_SEQ = 256  # llama-cparams.h


def default_pool_cells(model: Model, at_least: int) -> int:
    """The model's trained context, at least ``at_least`` cells, capped so that the KV pool takes
    at most a quarter of physical memory."""
    want = max(model.n_ctx_train, at_least)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(256, min(want, mem // 4 // kv_bytes_per_cell(model)))


def kv_bytes_per_cell(model: Model) -> int:
    """Bytes of K and V (f16) one token takes in the KV cache across all layers."""
    n_layer = ll.llama_model_n_layer(model.ptr)
    n_head, n_head_kv = ll.llama_model_n_head(model.ptr), ll.llama_model_n_head_kv(model.ptr)
    return 2 * 2 * n_layer * model.n_embd * n_head_kv // max(n_head, 1)


class Runner:
    def __init__(self, model: Model, cfg: RunnerConfig) -> None:
        self.model = model
        p = ll.llama_context_default_params()
        p.n_ctx = cfg.n_ctx
        p.n_batch = cfg.n_batch
        p.n_ubatch = cfg.n_batch
        p.n_seq_max = cfg.n_seq_max or cfg.n_slots
        p.n_threads = cfg.n_threads
        p.n_threads_batch = cfg.n_threads
        p.kv_unified = cfg.kv_unified
        self.unified = cfg.kv_unified
        p.swa_full = False  # windowed layers keep n_swa + n_ubatch cells, not n_ctx (llama-server)
        p.no_perf = True
        cfg.placement.apply(p)
        self.params = p  # what llama.cpp was given (read back by tests)
        self.ctx = ll.llama_init_from_model(model.ptr, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_ctx_seq: int = ll.llama_n_ctx_seq(self.ctx)
        self.n_ctx: int = ll.llama_n_ctx(self.ctx)
        self.n_seq_max: int = p.n_seq_max
        self.bytes_per_cell = kv_bytes_per_cell(model)
        self.n_swa: int = ll.llama_model_n_swa(model.ptr)
        self._tail_removable = not (ll.llama_model_is_recurrent(model.ptr)
                                    or ll.llama_model_is_hybrid(model.ptr))
        self.n_batch = cfg.n_batch
        self.n_vocab = model.n_vocab
        self._views: dict[int, np.ndarray] = {}  # logits row address -> view (see logits)
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

    def keepable(self, slot: int, keep: int) -> int:
        """How many of the slot's first ``keep`` cells a trim can keep and continue from: ``keep``
        (at most what the slot holds), or 0 when the memory cannot drop the rest."""
        n = min(keep, ll.llama_memory_seq_pos_max(self.mem, slot) + 1)
        if n <= 0:
            return 0
        if not self._tail_removable and n < keep:
            return 0
        # the token at position n attends to positions n - n_swa + 1 .. n - 1
        need = max(0, n - self.n_swa + 1) if self.n_swa else 0
        if ll.llama_memory_seq_pos_min(self.mem, slot) > need:
            return 0
        return n

    def trim(self, slot: int, keep: int) -> int:
        """Drop slot's KV cells from position ``keep`` on; returns the cells kept (``keep``, or 0
        when the memory refused: then the slot is empty and the caller recomputes)."""
        kept = self.keepable(slot, keep)
        if kept == 0 or not ll.llama_memory_seq_rm(self.mem, slot, kept, -1):
            ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
            return 0
        return kept

    def clear_slot(self, slot: int) -> None:
        ll.llama_memory_seq_rm(self.mem, slot, -1, -1)

    def copy(self, src: int, dst: int, n: int) -> None:
        """``dst`` (empty) gets ``src``'s first ``n`` cells. Unified KV: the cells are tagged.
        Separate streams: llama.cpp would only queue a whole-stream buffer copy until the next
        decode, and a state write into ``src`` before that decode (a RAM restore into a slot just
        freed in the same admission pass) would then reach ``dst`` in place of ``src``'s cells
        (seen: a prompt answered with a neighbour's prefix). So the cells go through the state
        API, which copies at once (and only the sequence's cells, not the whole stream)."""
        if self.unified:
            ll.llama_memory_seq_cp(self.mem, src, dst, 0, n)
            return
        ll.llama_memory_seq_rm(self.mem, dst, -1, -1)
        blob = self.save(src)
        if blob is None or not self.restore(blob, dst):
            raise DecodeError(f"slot {src} could not be copied to slot {dst}")
        ll.llama_memory_seq_rm(self.mem, dst, n, -1)

    def save(self, slot: int) -> np.ndarray | None:
        """The slot's KV state in host memory (``len()`` bytes), or None if llama.cpp fails.

        The buffer is not zeroed first (llama.cpp writes every byte): a zeroed ctypes array of a
        1,000-token state (18 MB) cost 8.8 ms against 1.0 ms, on the engine thread with the GIL
        held (``py-spy --gil`` on the multi-turn load: 4 of every 5 samples of the engine thread
        holding the GIL were that zeroing)."""
        size = ll.llama_state_seq_get_size(self.ctx, slot)
        buf = np.empty(size, np.uint8)
        if size == 0 or ll.llama_state_seq_get_data(self.ctx, _u8p(buf), size, slot) != size:
            return None
        return buf

    def restore(self, blob: np.ndarray, slot: int) -> bool:
        """Load a saved state into ``slot``; False when the pool has no room for it."""
        return ll.llama_state_seq_set_data(self.ctx, _u8p(blob), len(blob), slot) != 0

    def run(self, plan: StepPlan) -> dict[int, int]:
        """Decode every piece of work; return {sequence id: first logits row} (a work item's
        ``n_logits`` rows are contiguous from there). When the step also decodes, every prompt
        chunk but its last token goes in a ``llama_decode`` of its own first, and those last
        tokens join the decodes: the second decode then holds one token per running sequence, in
        one ubatch with no gap in the ids (llama.cpp cuts a batch over separate streams into
        equal-length pieces of consecutive ids). Measured cheaper than one mixed batch and than
        leaving the chunk's id out (``benchmarks/mixed_step.py``). Without decodes, prompt chunks
        that need no logits go ahead of the ones that do."""
        for src, dst, keep in plan.copies:
            ll.llama_memory_seq_rm(self.mem, dst, -1, -1)
            if self.keepable(src, keep) != keep:
                raise DecodeError(f"slot {src} could not share {keep} KV cells as planned")
            self.copy(src, dst, keep)
        work = sorted(plan.work, key=_by_slot)
        decoding = any(w.logits and len(w.tokens) == 1 + len(w.draft) for w in work)
        ahead: list[Work] = []
        rest: list[Work] = []
        for w in work:
            if decoding and w.image is None and not w.draft and len(w.tokens) > 1:
                n = len(w.tokens) - 1
                ahead.append(Work(w.seq, w.tokens[:n], w.pos, False))
                rest.append(Work(w.seq, w.tokens[n:], w.pos + n, w.logits))
            elif decoding or w.logits or w.image is not None:
                rest.append(w)
            else:
                ahead.append(w)
        if ahead and rest:
            self._decode(ahead)
            work = rest
        return self._decode(work)

    def _decode(self, work: list[Work]) -> dict[int, int]:
        """One ``llama_decode`` of ``work`` (in sequence id order) after its images.

        When every item is one token (the decodes, with prompt tokens beside them) and some need
        logits, every token gets them: llama.cpp decodes 8 tokens with 7 outputs slower than with 8
        (39.9 vs 37.2 ms at depth 600, ``benchmarks/mixed_step.py --outputs``); the spare rows are
        never read."""
        n = 0
        multi = False
        rows: dict[int, int] = {}
        tok, pos, nseq, seq, lg = self._tok, self._pos, self._nseq, self._seq, self._lg
        for w in work:
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
            multi = multi or len(w.tokens) > 1
            k = w.n_logits
            if k:
                for i in range(n - k, n):
                    lg[i] = 1
                rows[w.seq.id] = n - k
        if n == 0:
            return rows
        if rows and not multi:
            for i in range(n):
                lg[i] = 1
        self.batch.n_tokens = n
        rc = ll.llama_decode(self.ctx, self.batch)  # blocks this thread only; GIL released by ctypes
        if rc != 0:
            raise DecodeError(f"llama_decode returned {rc}")
        return rows

    def logits(self, row: int) -> np.ndarray:
        """A writable float32 view of one logits row (valid until the next run).

        Views are kept by address: llama.cpp's output buffer moves only when it grows, so after
        the first steps every row is a dict hit (building a view cost ~70 us a token at c=1,
        measured in the engine thread, where caches are cold after each decode)."""
        addr = _LOGITS_ITH(self.ctx, row)
        view = self._views.get(addr)
        if view is None:
            if not addr:
                raise DecodeError(f"llama.cpp has no logits for batch row {row}")
            if len(self._views) >= 4096:  # the buffer moved often: drop the old addresses
                self._views.clear()
            view = self._views[addr] = np.ctypeslib.as_array(
                (ctypes.c_float * self.n_vocab).from_address(addr))
        return view

    def sample(self, sampler: ctypes.c_void_p, row: int) -> int:
        return ll.llama_sampler_sample(sampler, self.ctx, row)

    def close(self) -> None:
        if self.ctx:
            ll.llama_batch_free(self.batch)
            if self._embd_batch is not None:
                ll.llama_batch_free(self._embd_batch)
            ll.llama_free(self.ctx)
            self.ctx = None


def _u8p(buf: np.ndarray):
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def _by_slot(w: Work) -> int:
    return w.seq.slot if w.seq.slot is not None else -1
