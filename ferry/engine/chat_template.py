"""Chat templates from the GGUF (``tokenizer.chat_template``), rendered in a jinja2 sandbox.

The sandbox refuses attribute access to Python internals (no file or module access) and caps
``range``; a template that raises or misbehaves becomes an ``InvalidRequest`` / ``Unsupported``
for that request, never a server error.
"""

from __future__ import annotations

import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ferry.errors import InvalidRequest


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template: {message}")


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            undefined=jinja2.StrictUndefined.__base__)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        env.filters.setdefault("tojson", env.filters.get("tojson"))
        try:
            self._tpl = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ValueError(f"invalid chat template: {e}") from e
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        try:
            return self._tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token,
                                    tools=tools)
        except InvalidRequest:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise InvalidRequest(f"chat template refused an unsafe operation: {e}") from e
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                RecursionError, OverflowError) as e:
            raise InvalidRequest(f"chat template could not render these messages: {e}") from e
