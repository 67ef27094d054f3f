"""Chat completion chunks in, Responses API stream events out (one response, one choice).

`ResponseEvents` is the only place Responses output is shaped: the streamed events and the final
Response object (returned by the non-streamed request, stored, replayed) are built together, so
they always agree.

Invariants:
- ``sequence_number`` starts at 0 and grows by one per event, with no gaps.
- Output items open lazily: text opens a ``message`` item (``output_item.added``,
  ``content_part.added``), a tool-call delta with an ``id`` opens a ``function_call`` item; a
  new item closes the open one (``*.done`` events, then ``output_item.done``). Every opened item
  is closed before the terminal event.
- ``response.in_progress`` comes before the first output item: at once for a foreground
  response, when the engine produces the first token for a background one (it was ``queued``).
- Terminal event: ``response.completed``, ``response.incomplete`` (the token budget ran out:
  ``incomplete_details.reason = max_output_tokens``) or ``error`` + ``response.failed``. A
  cancelled generation gets no terminal event (nobody is listening) but its status becomes
  ``cancelled``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ferry.errors import FerryError, Overloaded


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_usage(chat: dict) -> dict:
    """Chat ``usage`` in the Responses API's words."""
    details = chat.get("prompt_tokens_details") or {}
    return {"input_tokens": chat["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": details.get("cached_tokens", 0),
                                     "cache_write_tokens": 0},
            "output_tokens": chat["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat["total_tokens"]}


def _delta_logprobs(lp: dict | None) -> list[dict]:
    return [{"token": t["token"], "logprob": t["logprob"],
             "top_logprobs": [{"token": x["token"], "logprob": x["logprob"]}
                              for x in t["top_logprobs"]]}
            for t in (lp or {}).get("content") or ()]


class ResponseEvents:
    """Feeds on chat chunks (``chat.completion.chunk`` dicts); each call returns the events due.

    ``response`` is the Response object, updated in place; at the end it is the final one.
    """

    def __init__(self, response: dict, *, logprobs: bool = False) -> None:
        self.response = response
        self.logprobs = logprobs
        self.seq = 0
        self.started = False  # response.in_progress sent
        self.finished = False  # a terminal status was reached
        self._item: dict | None = None  # the open output item
        self._text: list[str] = []  # the open message's text so far
        self._lps: list[dict] = []  # ... and its logprobs (chat format)
        self._calls: dict[int, dict] = {}  # chat tool-call index -> function_call item

    def _ev(self, type_: str, **fields: Any) -> dict:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def created(self) -> list[dict]:
        """``response.created`` (and ``in_progress`` unless the response waits in the queue)."""
        out = [self._ev("response.created", response=dict(self.response, output=[]))]
        if self.response["status"] != "queued":
            out += self._start()
        return out

    def _start(self) -> list[dict]:
        if self.started:
            return []
        self.started = True
        self.response["status"] = "in_progress"
        return [self._ev("response.in_progress", response=dict(self.response, output=[]))]

    def feed(self, chunk: dict) -> list[dict]:
        out: list[dict] = []
        if chunk.get("usage"):
            self.response["usage"] = response_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text_delta(delta["content"], choice.get("logprobs"))
            for tc in delta.get("tool_calls") or ():
                out += self._call_delta(tc)
            if choice.get("finish_reason"):
                out += self._finish(choice["finish_reason"])
        return out

    def _text_delta(self, text: str, lp: dict | None) -> list[dict]:
        out = self._start()
        if self._item is None or self._item["type"] != "message":
            out += self._open_message()
        self._text.append(text)
        deltas = _delta_logprobs(lp) if self.logprobs else []
        if self.logprobs and lp:
            self._lps += lp.get("content") or []
        assert self._item is not None  # the message opened above
        out.append(self._ev("response.output_text.delta", item_id=self._item["id"],
                            output_index=self._index(), content_index=0, delta=text,
                            logprobs=deltas))
        return out

    def _call_delta(self, tc: dict) -> list[dict]:
        out = self._start()
        fn = tc.get("function") or {}
        if tc.get("id"):
            out += self._close()
            item = {"id": item_id("fc"), "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": tc["id"], "name": fn.get("name", "")}
            self._calls[tc.get("index", 0)] = self._item = item
            self.response["output"].append(item)
            out.append(self._ev("response.output_item.added", output_index=self._index(),
                                item=dict(item)))
        call = self._calls.get(tc.get("index", 0))
        if call is not None and fn.get("arguments"):
            call["arguments"] += fn["arguments"]
            out.append(self._ev("response.function_call_arguments.delta", item_id=call["id"],
                                output_index=self.response["output"].index(call),
                                delta=fn["arguments"]))
        return out

    def _open_message(self) -> list[dict]:
        out = self._close()
        item = {"id": item_id("msg"), "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        self._item, self._text, self._lps = item, [], []
        self.response["output"].append(item)
        i = self._index()
        out.append(self._ev("response.output_item.added", output_index=i,
                            item=dict(item, content=[])))
        out.append(self._ev("response.content_part.added", item_id=item["id"], output_index=i,
                            content_index=0, part=self._part("")))
        return out

    def _part(self, text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [],
                "logprobs": self._lps if self.logprobs else []}

    def _index(self) -> int:
        return len(self.response["output"]) - 1

    def _close(self, status: str = "completed") -> list[dict]:
        item, self._item = self._item, None
        if item is None:
            return []
        i = self.response["output"].index(item)
        item["status"] = status
        out = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = self._part(text)
            item["content"] = [part]
            out.append(self._ev("response.output_text.done", item_id=item["id"], output_index=i,
                                content_index=0, text=text,
                                logprobs=_delta_logprobs({"content": self._lps})))
            out.append(self._ev("response.content_part.done", item_id=item["id"],
                                output_index=i, content_index=0, part=part))
        else:
            out.append(self._ev("response.function_call_arguments.done", item_id=item["id"],
                                output_index=i, name=item["name"], arguments=item["arguments"]))
        out.append(self._ev("response.output_item.done", output_index=i, item=item))
        return out

    def _finish(self, reason: str) -> list[dict]:
        """The chat finish_reason: closes the output; the terminal event waits for `end`."""
        if reason == "cancelled":
            self._close("incomplete")
            self.response["status"] = "cancelled"
            return []
        out = self._start()
        if not self.response["output"]:  # nothing generated: still one (empty) message
            out += self._open_message()
        if reason == "length":
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
            return out + self._close("incomplete")
        self.response["status"] = "completed"
        return out + self._close()

    def end(self) -> list[dict]:
        """The terminal event, after the usage chunk."""
        status = self.response["status"]
        if status not in ("completed", "incomplete"):
            return []
        self.finished = True
        self.response["completed_at"] = int(time.time()) if status == "completed" else None
        return [self._ev(f"response.{status}", response=self.response)]

    def fail(self, err: FerryError) -> list[dict]:
        """``error`` then ``response.failed``: the generation raised after the stream began."""
        out = self._close("incomplete")
        code = "rate_limit_exceeded" if isinstance(err, Overloaded) else "server_error"
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": err.message}
        self.finished = True
        out.append(self._ev("error", code=err.code or code, message=err.message,
                            param=err.param))
        out.append(self._ev("response.failed", response=self.response))
        return out
