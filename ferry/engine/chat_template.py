"""Chat templates from the GGUF (``tokenizer.chat_template``), rendered in a jinja2 sandbox.

Invariants:
- The sandbox refuses Python internals: an unsafe attribute (``__class__``, ``_TemplateReference__
  context``, ...) raises instead of rendering as empty text, so the request gets a 400.
- Every render has a budget: at most ``MAX_RANGE_ITEMS`` items over all ``range()`` calls (so
  nested loops cannot multiply past it), ``*``/``**`` that would build huge strings, lists or
  numbers are refused, and the output is capped at ``MAX_OUTPUT_CHARS``. A runaway template is a
  400 for that request in well under a second; the server keeps serving.
- Any template error is an ``InvalidRequest`` for that request, never a server error.
"""

from __future__ import annotations

import contextvars
import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ferry.errors import InvalidRequest

MAX_RANGE_ITEMS = 1_000_000
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
MAX_POWER = 64

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_budget")


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}")


def _range(*args: int) -> range:
    r = range(*args)
    left = _budget.get()
    left[0] -= len(r)
    if left[0] < 0:
        raise SecurityError(f"template loops exceed {MAX_RANGE_ITEMS} iterations")
    return r


def _size(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POWER:
            raise SecurityError("exponent too large in chat template")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(n, int) and size * n > MAX_OUTPUT_CHARS:
                    raise SecurityError("chat template builds a value that is too large")
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} is not allowed in chat templates")


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        env.globals["range"] = _range
        try:
            self._tpl = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ValueError(f"invalid chat template: {e}") from e
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        token = _budget.set([MAX_RANGE_ITEMS])
        try:
            out, size = [], 0
            for chunk in self._tpl.generate(messages=messages, tools=tools,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token=self.bos_token, eos_token=self.eos_token):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise SecurityError("chat template output is too large")
                out.append(chunk)
            return "".join(out)
        except InvalidRequest:
            raise
        except SecurityError as e:
            raise InvalidRequest(f"chat template refused an unsafe operation: {e}") from e
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                RecursionError, OverflowError, MemoryError) as e:
            raise InvalidRequest(f"chat template could not render these messages: {e}") from e
        finally:
            _budget.reset(token)
