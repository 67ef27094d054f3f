"""A request's generation state: its tokens, sampling parameters, slot and status.

Invariants:
- ``num_computed`` tokens (of ``all_tokens``) are in the KV cache of ``slot``; up to
  ``prefill_end`` they are computed as prefill (the prompt; all tokens so far after the runner lost
  the KV of a sequence that was generating, see ``Scheduler.kv_lost``), then one token per step.
- A running sequence owns its slot (a llama.cpp sequence id); the scheduler alone moves it between
  the waiting and running queues, hands its slot to the prompt cache when it finishes, and may
  preempt it (``swapped`` holds its KV until it runs again).
- ``cancelled`` may be set from any thread; the engine acts on it at the start of its next step.
- ``images`` are spans of the prompt given as ready-made embeddings (a multimodal projector's
  output, computed before submission): ``prompt[span.start:span.end]`` holds placeholder ids so
  lengths and positions line up; spans are sorted, disjoint, and never end the prompt.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.engine.speculative import Drafter

_ids = itertools.count()


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # Factory of a per-sequence token constraint (structured outputs); None = free text.
    constraint: Callable[[], Any] | None = None
    speculative: bool = True  # allow speculative decoding if the server enables it


@dataclass(frozen=True, slots=True)
class ImageSpan:
    """One image in a prompt: ``embd`` ([n_tokens, n_embd] float32, C-contiguous) is decoded in
    place of the placeholder tokens at ``start``..``end``. ``causal`` False: the projector wants
    non-causal attention inside the image (mtmd_decode_use_non_causal)."""

    start: int
    embd: Any  # numpy.ndarray [n_tokens, n_embd] float32
    causal: bool = True

    @property
    def n_tokens(self) -> int:
        return int(self.embd.shape[0])

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass(slots=True)
class Output:
    """What one engine step produced for one sequence (sent to the asyncio side)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "error"
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int
    error: str | None = None
    # speculative tokens drafted for / accepted into this sequence (set on the final Output only)
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it (final Output only)


class Sequence:
    """One choice of one request. ``sink`` is called (from the engine thread) with each Output."""

    __slots__ = (
        "arrival",
        "bypassed",
        "cache_ns",
        "cancelled",
        "constraint",
        "detok",
        "drafter",
        "finish_reason",
        "first_token_time",
        "generated",
        "greedy_argmax",
        "id",
        "images",
        "max_tokens",
        "num_cached",
        "num_computed",
        "params",
        "prefill_end",
        "prompt",
        "sampler",
        "share_from",
        "sink",
        "slot",
        "status",
        "swapped",
    )

    def __init__(self, prompt: list[int], params: SamplingParams, max_tokens: int,
                 sink: Callable[[Output], None], arrival: float = 0.0,
                 images: tuple[ImageSpan, ...] = (), cache_ns: Hashable = "") -> None:
        self.id = next(_ids)
        self.cache_ns = cache_ns  # prompt-cache namespace: only its own entries are reused
        self.prompt = prompt
        self.images = images
        assert all(a.end <= b.start for a, b in itertools.pairwise(images)), images
        assert not images or images[-1].end < len(prompt), "a prompt must not end in an image"
        self.params = params
        self.sink = sink
        self.max_tokens = max_tokens
        self.status = Status.WAITING
        self.slot: int | None = None
        self.num_computed = 0
        self.num_cached = 0
        self.prefill_end = len(prompt)  # computed as prefill up to here (see the invariants)
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.cancelled = False
        self.sampler: Any = None
        self.constraint: Any = None
        self.detok: Any = None
        self.arrival = arrival
        self.first_token_time: float | None = None
        # (running sequence, n): copy its first n KV cells once it has computed them (scheduler)
        self.share_from: tuple[Sequence, int] | None = None
        self.greedy_argmax = False  # the engine may take the argmax itself (sampling.py)
        self.drafter: Drafter | None = None  # set when this sequence speculates
        self.bypassed = 0  # times admission preferred a later one while this was the oldest (bounded)
        self.swapped: Any = None  # KV state saved when preempted; restored on readmission

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.prefill_end

    def tokens_at(self, pos: int, n: int) -> list[int]:
        """``all_tokens[pos:pos + n]`` without copying the whole history when inside the prompt."""
        end = pos + n
        if end <= len(self.prompt):
            return self.prompt[pos:end]
        return self.all_tokens[pos:end]

    def image_at(self, pos: int) -> ImageSpan | None:
        """The image that starts at prompt position ``pos``, if any."""
        return next((im for im in self.images if im.start == pos), None)

    def text_until(self, pos: int) -> int:
        """Where the text run starting at ``pos`` ends: the next image's start, or ``prefill_end``."""
        return next((im.start for im in self.images if im.start >= pos), self.prefill_end)

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt + self.generated

    def __repr__(self) -> str:
        return f"Sequence({self.id}, {self.status.value}, slot={self.slot}, gen={len(self.generated)})"
