"""Chat prompts whose control tokens come from the template only, never from a client's text.

Invariants:
- Every string a client supplies (message content and names, tool calls and tool results, tool
  definitions) is tokenized as plain text: the text of a control token inside it
  (``<|im_end|>\\n<|im_start|>system``) becomes ordinary characters, never the control token.
  Only the template's own markup (and the BOS/EOS it writes) is parsed for special tokens.
  This is OpenAI's behaviour; text completions keep parsing special tokens in the raw prompt.
- How: before rendering, each control-token text in client strings is swapped for a placeholder
  made of a per-render random nonce (lowercase ASCII letters, digits and ``_``, so ``trim``,
  ``lower``, ``tojson`` and string tests in templates keep it intact and no client can guess
  it). The rendered text is cut at the placeholders: the markup between them is tokenized with
  special-token parsing, each placeholder's original text without.
- A chat whose client strings hold no control-token text is tokenized in one call, exactly as
  the rendered text always was.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from ferry.engine.chat_template import ChatTemplate
from ferry.engine.model import Model


@dataclass(frozen=True, slots=True)
class RenderedChat:
    """``segments``: the prompt text in order, as (text, parse special tokens in it)."""

    segments: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.segments)

    def tokenize(self, model: Model) -> list[int]:
        return tokenize_segments(model, self.segments)


def tokenize_segments(model: Model, segments: tuple[tuple[str, bool], ...] | list) -> list[int]:
    """Tokens of ``segments`` in order; BOS (if the model adds one) before the first only."""
    if len(segments) == 1:
        return model.tokenize(segments[0][0], add_special=True, parse_special=segments[0][1])
    tokens: list[int] = []
    for i, (text, special) in enumerate(segments):
        if text or i == 0:
            tokens += model.tokenize(text, add_special=i == 0, parse_special=special)
    return tokens


class _Escaper:
    """Swaps control-token texts in client strings for placeholders of one render."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.nonce = secrets.token_hex(8)
        self.originals: list[str] = []
        self._index: dict[str, int] = {}

    def _swap(self, m: re.Match[str]) -> str:
        k = self._index.get(m.group())
        if k is None:
            k = self._index[m.group()] = len(self.originals)
            self.originals.append(m.group())
        return f"ferry{self.nonce}_{k}_"

    def escape(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.pattern.sub(self._swap, obj)
        if isinstance(obj, dict):
            return {k: self.escape(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.escape(v) for v in obj]
        return obj

    def segments(self, text: str) -> tuple[tuple[str, bool], ...]:
        if not self.originals:
            return ((text, True),)
        parts = re.split(f"ferry{self.nonce}_(\\d+)_", text)
        return tuple((self.originals[int(p)], False) if i % 2 else (p, True)
                     for i, p in enumerate(parts))


def control_pattern(model: Model) -> re.Pattern[str] | None:
    """A regex matching the text of any of the model's control tokens (longest first), cached on
    the model."""
    cached = getattr(model, "_control_pattern", False)  # False: not computed yet
    if cached is None or isinstance(cached, re.Pattern):
        return cached
    texts = {model.pieces[t].decode("utf-8", "replace") for t in model.control_ids}
    texts.discard("")
    pattern = re.compile(_trie(texts)) if texts else None
    model._control_pattern = pattern  # type: ignore[attr-defined]
    return pattern


def _trie(texts: set[str]) -> str:
    """One regex for many literals, as a trie (Gemma has thousands of ``<unusedN>`` control
    tokens: a flat alternation would try each of them at every ``<``). The longest wins."""
    root: dict = {}
    for t in texts:
        node = root
        for ch in t:
            node = node.setdefault(ch, {})
        node[None] = True

    def build(node: dict) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(
            ((k, v) for k, v in node.items() if k is not None))]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if None in node else body

    return build(root)


def render_chat(template: ChatTemplate, model: Model, messages: list[dict[str, Any]], *,
                continue_final: bool = False) -> RenderedChat:
    """Render ``messages`` (client strings everywhere in them) into markup and plain segments.
    ``continue_final``: the last (assistant) message stays open and the answer continues it
    (the conversation before it, the generation prompt, then its text)."""
    pattern = control_pattern(model)
    esc = _Escaper(pattern) if pattern is not None else None
    if esc is not None:
        messages = esc.escape(messages)
    if continue_final:
        *head, last = messages
        text = template.render(head, add_generation_prompt=True) + last["content"]
    else:
        text = template.render(messages, add_generation_prompt=True)
    return RenderedChat(esc.segments(text) if esc is not None else ((text, True),))
