"""Ferry: an OpenAI-compatible LLM inference server with continuous batching and resumable streams."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str):  # lazy: importing ferry must not load llama.cpp
    if name == "create_app":
        from ferry.app import create_app

        return create_app
    raise AttributeError(name)
