"""Incremental detokenisation: token bytes in, safe text out.

Invariants:
- Every string released is valid UTF-8 text: a multi-byte character split across tokens is held
  back until its last byte arrives.
- A stop string is never released, even when it spans several tokens: text that could be the start
  of a stop string is held until it is proven not to be one.
- ``released text + held text`` always equals everything decoded so far (up to a stop match).
"""

from __future__ import annotations

import codecs


class TextAssembler:
    def __init__(self, stop: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in (stop or []) if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text, once stopped

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stop:
            self._held = ""
            return text
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of generation (EOS or length): release whatever is held."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._find_stop(text)
        if cut is None:
            return text
        self.stopped = True
        return text[:cut]

    def _find_stop(self, text: str) -> int | None:
        hits = [(i, s) for s in self._stop if (i := text.find(s)) >= 0]
        if not hits:
            return None
        cut, self.matched = min(hits, key=lambda h: h[0])
        return cut

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(self._max_stop - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0
