"""Sentence embeddings for ``POST /v1/embeddings``, without torch (see ``model`` for the runtime)."""

from __future__ import annotations

from ferry.embeddings.encoding import decode_base64, encode_base64, truncate_dimensions
from ferry.embeddings.model import EmbeddingModel, bundled_model_dir

__all__ = [
    "EmbeddingModel",
    "bundled_model_dir",
    "decode_base64",
    "encode_base64",
    "truncate_dimensions",
]
