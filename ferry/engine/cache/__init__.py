"""The prompt cache: a prefix index (``index``) and the tiers that hold cached KV (``store``)."""

from __future__ import annotations

import hashlib


def namespace(api_key: str | None, salt: str | None) -> str:
    """The cache namespace of a request: cached prefixes are reused only within one namespace.
    "" when there is neither a key nor a salt; otherwise a digest (keys are not kept)."""
    if api_key is None and salt is None:
        return ""
    raw = f"{len(api_key or '')}:{api_key or ''}:{salt or ''}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]
