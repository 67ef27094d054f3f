"""How a vector leaves the server: OpenAI ``encoding_format`` and ``dimensions``.

Invariants:
- ``encode_base64`` is base64 of the vector's little-endian float32 bytes, whatever the host's
  byte order: what the official openai client decodes (``np.frombuffer(b64decode(s), "float32")``)
  when it asks for ``encoding_format="base64"``, which it does by default.
- ``truncate_dimensions`` keeps the first ``dimensions`` components and re-normalises them. That is
  only meaningful for Matryoshka-trained models; the route must first check the model's
  ``supports_dimensions`` (False for MiniLM) and answer 400 otherwise.
"""

from __future__ import annotations

import base64

import numpy as np

from ferry.errors import InvalidRequest


def encode_base64(vec: np.ndarray) -> str:
    """Base64 of ``vec`` as little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def decode_base64(data: str) -> np.ndarray:
    """Inverse of ``encode_base64``: float32 [dim]."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """First ``dimensions`` components of each row of ``vectors`` [n, dim], L2-normalised again."""
    dim = vectors.shape[-1]
    if not 1 <= dimensions <= dim:
        raise InvalidRequest(
            f"dimensions must be between 1 and {dim}, got {dimensions}", param="dimensions"
        )
    cut = vectors[..., :dimensions]
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)
