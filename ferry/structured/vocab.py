"""A model's token vocabulary as constrained decoding needs it.

Invariants:
- ``pieces[i]`` is the exact byte string token ``i`` adds to the output (special tokens rendered
  as their text, e.g. ``b"<|im_end|>"``); ``len(pieces) == n_vocab``.
- ``eos_ids`` are every end-of-generation token (``llama_vocab_eos``, ``llama_vocab_eot`` and
  every id for which ``llama_vocab_is_eog`` holds). A constraint allows them only when complete.
- ``special_ids`` are control tokens; a constraint never allows them inside structured output.
- ``vocab_ptr`` (when set) is the llama.cpp ``llama_vocab*`` the vocab was read from; the model
  that owns it must outlive this object (the engine keeps its model for the process lifetime).
  Backends use it only to call ``llama_tokenize`` natively.

Building a vocab walks every token once (~50 ms for 49152 tokens): build it once per model.
``TokenVocab`` compares by identity so it can key caches of compiled grammars.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import llama_cpp


@dataclass(eq=False)
class TokenVocab:
    pieces: list[bytes]
    eos_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()
    bos_id: int | None = None
    vocab_ptr: object | None = field(default=None, repr=False)

    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_gguf_vocab(cls, vocab_ptr: object) -> TokenVocab:
        """Read a vocab from ``llama_model_get_vocab(model)``."""
        n = llama_cpp.llama_vocab_n_tokens(vocab_ptr)
        buf_len = 1024
        buf = ctypes.create_string_buffer(buf_len)
        pieces: list[bytes] = []
        eos: set[int] = set()
        special: set[int] = set()
        for tok in range(n):
            k = llama_cpp.llama_token_to_piece(vocab_ptr, tok, buf, buf_len, 0, True)
            if k < 0:  # piece longer than the buffer: grow once and retry
                big = ctypes.create_string_buffer(-k)
                k = llama_cpp.llama_token_to_piece(vocab_ptr, tok, big, -k, 0, True)
                pieces.append(big.raw[:k])
            else:
                pieces.append(buf.raw[:k])
            if llama_cpp.llama_vocab_is_eog(vocab_ptr, tok):
                eos.add(tok)
            if llama_cpp.llama_vocab_is_control(vocab_ptr, tok):
                special.add(tok)
        for tok in (llama_cpp.llama_vocab_eos(vocab_ptr), llama_cpp.llama_vocab_eot(vocab_ptr)):
            if 0 <= tok < n:
                eos.add(tok)
        bos = llama_cpp.llama_vocab_bos(vocab_ptr)
        return cls(
            pieces=pieces,
            eos_ids=frozenset(eos),
            special_ids=frozenset(special),
            bos_id=bos if 0 <= bos < n else None,
            vocab_ptr=vocab_ptr,
        )
