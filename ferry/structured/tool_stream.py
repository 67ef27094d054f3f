"""Incremental parser for the JSON a tool-calling model is constrained to produce.

The constrained output (see tools.tool_output_schema) is one of::

    {"content": "<text reply>"}
    {"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}

Invariants:
- Feeding the text in any split yields the same final ``content``/``calls``; the concatenated
  ``arguments`` fragments of call ``i`` equal ``calls[i].arguments`` exactly (it is the raw JSON
  text of the ``arguments`` value as generated, never re-serialised).
- For each call the first delta carries ``id``, ``type`` and ``function.name`` with
  ``arguments: ""``; later deltas carry only ``index`` and ``function.arguments``.
- Text that does not start with ``{"content"`` or ``{"tool_calls"`` (e.g. unconstrained output)
  is passed through verbatim as content.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass

_WS = " \t\r\n"
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as generated

    def to_dict(self) -> dict:
        """The OpenAI ``message.tool_calls[]`` entry."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _string_end(buf: str, pos: int) -> int | None:
    """Index just past the JSON string starting at ``buf[pos] == '"'``; None if incomplete."""
    i = pos + 1
    while i < len(buf):
        c = buf[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1
    return None


def _safe_string_prefix(buf: str, pos: int) -> tuple[int, bool]:
    """Scan string body from ``pos``: (end of a decodable prefix, whether the quote closed there)."""
    i, n = pos, len(buf)
    while i < n:
        c = buf[i]
        if c == '"':
            return i, True
        if c != "\\":
            i += 1
            continue
        if i + 1 >= n:
            break
        if buf[i + 1] != "u":
            i += 2
            continue
        if i + 6 > n:
            break
        if 0xD800 <= int(buf[i + 2 : i + 6], 16) < 0xDC00:  # high surrogate: needs its pair
            if i + 12 > n:
                break
            i += 12
        else:
            i += 6
    return i, False


class ToolStreamParser:
    """Turns text fragments into OpenAI ``chat.completion.chunk`` ``delta`` dicts."""

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0
        self._state = "start"
        self._content: list[str] = []
        self.calls: list[ToolCall] = []
        self._pending_args = ""  # arguments seen before the call's name (not with our schema)
        self._named = False
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._arg_started = False
        self._deltas: list[dict] = []

    @property
    def content(self) -> str | None:
        if self.calls:
            return None
        return "".join(self._content)

    def feed(self, fragment: str) -> list[dict]:
        self._buf += fragment
        self._run(final=False)
        return self._take()

    def finish(self) -> list[dict]:
        """Flush what is left; afterwards ``content`` and ``calls`` hold the final result."""
        self._run(final=True)
        return self._take()

    def _take(self) -> list[dict]:
        out, self._deltas = self._deltas, []
        return out

    # -- emission ------------------------------------------------------------------------------
    def _emit_content(self, text: str) -> None:
        if not text:
            return
        self._content.append(text)
        last = self._deltas[-1] if self._deltas else None
        if last is not None and "content" in last:
            last["content"] += text
        else:
            self._deltas.append({"content": text})

    def _emit_args(self, text: str) -> None:
        if not text:
            return
        if not self._named:
            self._pending_args += text
            return
        call = self.calls[-1]
        call.arguments += text
        index = len(self.calls) - 1
        last = self._deltas[-1] if self._deltas else None
        if last is not None and "tool_calls" in last:
            entry = last["tool_calls"][0]
            if entry["index"] == index and set(entry) == {"index", "function"}:
                entry["function"]["arguments"] += text
                return
        self._deltas.append({"tool_calls": [{"index": index, "function": {"arguments": text}}]})

    def _emit_header(self, name: str) -> None:
        call = ToolCall(id=new_call_id(), name=name, arguments="")
        self.calls.append(call)
        self._named = True
        entry = {
            "index": len(self.calls) - 1,
            "id": call.id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        self._deltas.append({"tool_calls": [entry]})
        pending, self._pending_args = self._pending_args, ""
        self._emit_args(pending)

    # -- parsing -------------------------------------------------------------------------------
    def _skip_ws(self) -> bool:
        """Advance past whitespace; False if the buffer is exhausted."""
        while self._pos < len(self._buf) and self._buf[self._pos] in _WS:
            self._pos += 1
        return self._pos < len(self._buf)

    def _run(self, final: bool) -> None:
        while self._step(final):
            pass

    def _step(self, final: bool) -> bool:
        """Advance one state; False when more text is needed (or parsing is over)."""
        s = self._state
        if s == "raw":
            self._emit_content(self._buf[self._pos :])
            self._pos = len(self._buf)
            return False
        if s in ("done", "broken"):
            return False
        if s == "content_str":
            return self._step_content()
        if s == "args":
            return self._step_args(final)
        if not self._skip_ws():
            return False
        c = self._buf[self._pos]
        if s == "start":
            if c != "{":
                self._state = "raw"
                return True
            self._pos += 1
            self._state = "top_key"
            return True
        if s in ("top_key", "call_key"):
            return self._step_key(s)
        expect = {"content_open": '"', "calls_open": "[", "top_end": "}"}.get(s)
        if expect is not None:
            if c != expect:
                return self._fail()
            self._pos += 1
            self._state = {"content_open": "content_str", "calls_open": "calls_next"}.get(s, "done")
            return True
        if s == "calls_next":
            if c == ",":
                self._pos += 1
                return True
            if c == "]":
                self._pos += 1
                self._state = "top_end"
                return True
            if c != "{":
                return self._fail()
            self._pos += 1
            self._named = False
            self._state = "call_key"
            return True
        if s == "call_name":
            end = _string_end(self._buf, self._pos)
            if end is None:
                return False
            self._emit_header(json.loads(self._buf[self._pos : end]))
            self._pos = end
            self._state = "call_key"
            return True
        return self._fail()

    def _step_key(self, s: str) -> bool:
        c = self._buf[self._pos]
        if s == "call_key" and c in ",}":
            self._pos += 1
            if c == "}":
                self._state = "calls_next"
            return True
        if c != '"':
            return self._fail()
        end = _string_end(self._buf, self._pos)
        if end is None:
            return False
        colon = self._buf.find(":", end)
        if colon < 0:
            return False
        if self._buf[end:colon].strip(_WS):
            return self._fail()
        key = json.loads(self._buf[self._pos : end])
        nxt = {
            ("top_key", "content"): "content_open",
            ("top_key", "tool_calls"): "calls_open",
            ("call_key", "name"): "call_name",
            ("call_key", "arguments"): "args",
        }.get((s, key))
        if nxt is None:
            return self._fail()
        self._pos = colon + 1
        self._state = nxt
        if nxt == "args":
            self._depth, self._in_str, self._esc, self._arg_started = 0, False, False, False
        return True

    def _step_content(self) -> bool:
        end, closed = _safe_string_prefix(self._buf, self._pos)
        if end > self._pos:
            self._emit_content(json.loads('"' + self._buf[self._pos : end] + '"'))
            self._pos = end
        if closed:
            self._pos += 1
            self._state = "top_end"
            return True
        return False

    def _step_args(self, final: bool) -> bool:
        buf, i = self._buf, self._pos
        done = False
        while i < len(buf):
            c = buf[i]
            if not self._arg_started:
                if c in _WS:  # whitespace before the value is not part of it
                    i += 1
                    self._pos = i
                    continue
                self._arg_started = True
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif c == "\\":
                    self._esc = True
                elif c == '"':
                    self._in_str = False
                    if self._depth == 0:
                        i += 1
                        done = True
                        break
            elif c == '"':
                self._in_str = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                if self._depth == 0:  # a scalar ended by the enclosing brace (not ours)
                    done = True
                    break
                self._depth -= 1
                if self._depth == 0:
                    i += 1
                    done = True
                    break
            elif c in _WS + "," and self._depth == 0:  # a scalar ended by a delimiter
                done = True
                break
            i += 1
        self._emit_args(buf[self._pos : i])
        self._pos = i
        if done or final:
            self._state = "call_key"
            return True
        return False

    def _fail(self) -> bool:
        if not self._content and not self.calls:  # nothing emitted yet: it is plain text
            self._pos = 0
            self._state = "raw"
            return True
        self._state = "broken"
        return False


def parse_tool_output(text: str) -> tuple[str | None, list[ToolCall]]:
    """Parse a complete constrained output: (text reply or None, tool calls)."""
    parser = ToolStreamParser()
    parser.feed(text)
    parser.finish()
    return parser.content, parser.calls
