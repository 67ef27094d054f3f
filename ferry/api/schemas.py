"""Request schemas (pydantic v2). Bounds here are the API contract: a violation is a 400 naming
the parameter. Unknown fields are ignored, as most OpenAI-compatible servers do, so clients that
send newer parameters keep working."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class _Sampling(_Req):
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

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

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


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class FunctionDef(_Req):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Req):
    type: Literal["function"]
    function: FunctionDef


class ChatCompletionRequest(_Sampling):
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


class CompletionRequest(_Sampling):
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
