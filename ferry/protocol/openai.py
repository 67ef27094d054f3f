"""OpenAI's request models (chat, completions, tokenizer, embeddings), the services' input.

Bounds here are the API contract: a violation is a 400 naming the parameter. Unknown fields are
ignored, as most OpenAI-compatible servers do, so clients that send newer parameters keep working.
``to_sampling_params`` turns a request into the engine's ``SamplingParams``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from ferry.engine.sequence import SamplingParams
from ferry.errors import InvalidRequest

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ImageURL(_Req):
    url: str
    detail: str | None = None


class ImagePart(_Req):
    type: Literal["image_url"]
    image_url: ImageURL


class AudioPart(_Req):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class RefusalPart(_Req):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart | AudioPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Req):
    name: str
    arguments: str


class ToolCall(_Req):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Req):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self, image: str = "") -> str:
        """The content as text; each image part becomes ``image`` (a projector's marker)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text if isinstance(p, TextPart) else
                       p.refusal if isinstance(p, RefusalPart) else
                       image if isinstance(p, ImagePart) else "" for p in self.content)

    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)

    def has_audio(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, AudioPart) for p in self.content)


class StreamOptions(_Req):
    include_usage: bool = False


class SamplingRequest(_Req):
    """The fields chat and text completions share: model, streaming and sampling."""

    model: str | None = None
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # llama.cpp / vLLM extensions
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    speculative: bool = Field(True, strict=True)  # opt out of server-side speculation
    # vLLM's prompt-cache isolation: only requests with the same salt (and API key) share
    # cached prefixes
    cache_salt: str | None = Field(None, min_length=1, max_length=256, strict=True)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, n_vocab: int, *, max_tokens: int | None, logprobs: bool = False,
                 top_logprobs: int = 0) -> SamplingParams:
        """The engine's parameters; OpenAI's defaults (temperature and top_p 1) for unset
        fields. A ``logit_bias`` token outside ``0..n_vocab-1`` is a 400."""
        bias: dict[int, float] = {}
        for k, v in (self.logit_bias or {}).items():
            tok = int(k)
            if not 0 <= tok < n_vocab:
                raise InvalidRequest(f"logit_bias token id {tok} is outside the vocabulary "
                                     f"(0..{n_vocab - 1})", param="logit_bias")
            bias[tok] = float("-inf") if v <= -100 else v
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k, min_p=self.min_p, repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=bias, seed=self.seed, max_tokens=max_tokens, stop=list(self.stop or []),
            ignore_eos=self.ignore_eos, logprobs=logprobs, top_logprobs=top_logprobs,
            speculative=self.speculative)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return [s for s in v if s]

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not k.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            if not -100.0 <= b <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {b}")
        return v


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    # vLLM's extension: the final assistant message is left open and the answer continues it
    continue_final_message: bool = Field(False, strict=True)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs a final assistant message")
        return self

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's current name), else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def to_sampling_params(self, n_vocab: int) -> SamplingParams:
        return self.sampling(n_vocab, max_tokens=self.token_limit, logprobs=self.logprobs,
                             top_logprobs=self.top_logprobs or 0)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    def to_sampling_params(self, n_vocab: int) -> SamplingParams:
        return self.sampling(n_vocab, max_tokens=self.max_tokens,
                             logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0)


class TokenizeRequest(_Req):
    model: str | None = None
    content: str = Field(..., description="text to tokenize (vLLM's `prompt` is accepted too)")
    add_special: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and "content" not in data and "prompt" in data:
            data = {**data, "content": data["prompt"]}
        return data


class DetokenizeRequest(_Req):
    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(_Req):
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(v)
        except ValidationError:  # one message naming `input`, not one per union member
            raise ValueError("input must be a string, a list of strings, a list of token ids "
                             "or a list of token-id lists") from None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
