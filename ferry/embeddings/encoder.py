"""The only place that runs the embedding model: llama.cpp contexts over one GGUF BERT.

Invariants:
- One ``llama_model`` (read-only, shared) and a pool of at most ``max_contexts`` contexts. A context
  is used by one thread at a time: ``encode`` takes one from the pool (blocking while all are
  busy) and always gives it back. So any number of threads may call ``encode``; at most
  ``max_contexts`` forwards run at once, each with ``n_threads`` ggml threads.
- A context runs ``UBATCH`` tokens per ``llama_encode``; a BERT ubatch must hold whole sequences,
  so a sequence is at most ``UBATCH`` (= the model's 512 positions) tokens. Attention spans the
  whole ubatch under a mask, so its cost grows with the square of the tokens packed together:
  512 measured faster than 2048 for short sentences.
- ``encode`` returns mean-pooled, *not* normalised, float32 rows in the order given.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import llama_cpp as ll
import numpy as np

from ferry.engine.hardware import Placement

UBATCH = 512
MAX_SEQS = 256  # sequences per ubatch (llama.cpp's n_seq_max ceiling)

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready  # noqa: PLW0603 -- llama.cpp's backend is process-wide: init once
    with _backend_lock:
        if not _backend_ready:
            ll.llama_backend_init()
            _backend_ready = True


class _Context:
    def __init__(self, model: ll.llama_model_p, n_threads: int, placement: Placement) -> None:
        cp = ll.llama_context_default_params()
        placement.apply(cp, kv_cache=False)
        cp.n_ctx = cp.n_batch = cp.n_ubatch = UBATCH
        cp.n_seq_max = MAX_SEQS
        cp.embeddings = True
        cp.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
        cp.n_threads = cp.n_threads_batch = n_threads
        self.ptr = ll.llama_init_from_model(model, cp)
        if not self.ptr:
            raise RuntimeError("llama.cpp could not create an embedding context")
        self.batch = ll.llama_batch_init(UBATCH, 0, 1)

    def run(self, seqs: list[list[int]], out: np.ndarray) -> None:
        """Pooled vectors of ``seqs`` (total <= UBATCH tokens, <= MAX_SEQS) into ``out`` rows."""
        b, k = self.batch, 0
        for sid, seq in enumerate(seqs):
            for pos, tok in enumerate(seq):
                b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, True
                b.seq_id[k][0] = sid
                k += 1
        b.n_tokens = k
        rc = ll.llama_encode(self.ptr, b)
        if rc != 0:
            raise RuntimeError(f"llama_encode failed ({rc})")
        dim = out.shape[1]
        for sid in range(len(seqs)):
            out[sid] = np.ctypeslib.as_array(ll.llama_get_embeddings_seq(self.ptr, sid), (dim,))

    def close(self) -> None:
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ptr)


class LlamaEncoder:
    def __init__(self, gguf_path: Path, *, n_threads: int = 1, max_contexts: int = 2,
                 placement: Placement | None = None) -> None:
        _init_backend()
        self.placement = placement or Placement()
        self.params, self._keep = self.placement.model_params()  # _keep: arrays params point to
        self._model = ll.llama_model_load_from_file(str(gguf_path).encode(), self.params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        self.dim: int = ll.llama_model_n_embd(self._model)
        self._n_threads = n_threads
        self._idle: queue.LifoQueue[_Context] = queue.LifoQueue()
        self._made = 0
        self._max = max_contexts
        self._lock = threading.Lock()
        self._idle.put(_Context(self._model, n_threads, self.placement))  # fail at load, not on first request
        self._made = 1

    def _acquire(self) -> _Context:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if self._made < self._max:
                    ctx = _Context(self._model, self._n_threads, self.placement)
                    self._made += 1
                    return ctx
            return self._idle.get()

    def encode(self, seqs: list[list[int]]) -> np.ndarray:
        """Mean-pooled vectors [len(seqs), dim] for id sequences packed as given: the caller
        groups them so each call holds <= UBATCH tokens and <= MAX_SEQS sequences."""
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        ctx = self._acquire()
        try:
            ctx.run(seqs, out)
        finally:
            self._idle.put(ctx)
        return out

    def close(self) -> None:
        while self._made:
            self._idle.get().close()
            self._made -= 1
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None
