"""Anthropic Messages API models: the request (``POST /v1/messages``, ``count_tokens``) and the
objects Ferry answers with, as the official ``anthropic`` SDK parses them.

Bounds follow Anthropic's API: ``max_tokens`` is required, ``temperature`` and ``top_p`` lie in
[0, 1], roles are ``user`` or ``assistant``. A violation is a 400 ``invalid_request_error`` whose
message names the field (``max_tokens: Field required``). Unknown top-level fields are ignored, as
Ferry's OpenAI routes ignore them; unknown content block types are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ferry.errors import FerryError, Overloaded

ANTHROPIC_VERSION = "2023-06-01"  # the version the models below follow; others are accepted


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Req):
    type: Literal["text"]
    text: str


class Base64Source(_Req):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(_Req):
    type: Literal["url"]
    url: str


class ImageBlock(_Req):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]

    def url(self) -> str:
        """The chat ``image_url`` form: a data: URI, or the http(s) URL."""
        s = self.source
        return s.url if isinstance(s, URLSource) else f"data:{s.media_type};base64,{s.data}"


class ToolUseBlock(_Req):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Req):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None


class ThinkingBlock(_Req):
    """Earlier turns' reasoning, sent back by clients; accepted and left out of the prompt."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Req):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type")]


class MessageParam(_Req):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    def blocks(self) -> list[Any]:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) \
            else list(self.content)


class Tool(_Req):
    type: Literal["custom"] | None = None  # server tools (web search, bash...) are not served
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]

    @field_validator("input_schema")
    @classmethod
    def _object(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") != "object":
            raise ValueError("input_schema must be a JSON schema with type 'object'")
        return v


class _Choice(_Req):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_Choice):
    type: Literal["auto"]


class ToolChoiceAny(_Choice):
    type: Literal["any"]


class ToolChoiceTool(_Choice):
    type: Literal["tool"]
    name: str


class ToolChoiceNone(_Req):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
                       Field(discriminator="type")]


class JSONOutputFormat(_Req):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Req):
    """Structured output (``format``), constrained as chat's ``response_format`` json_schema;
    ``effort`` is accepted and has no effect."""

    format: JSONOutputFormat | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, max_length=256)


class CountTokensRequest(_Req):
    """The prompt half of a request: what ``/v1/messages/count_tokens`` counts."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n\n".join(b.text for b in self.system) or None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    stream: bool = Field(False, strict=True)
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    ignore_eos: bool = Field(False, strict=True)  # llama.cpp / Ferry extension, as on chat


# ---- what Ferry answers (documented in /openapi.json; the SDK parses the same shapes) ----------
class AnthropicTextContent(BaseModel):
    type: Literal["text"]
    text: str


class AnthropicToolUseContent(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class AnthropicUsage(BaseModel):
    """``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` is the prompt;
    Ferry's automatic prefix cache reports its hits as cache reads and never bills a creation."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use",
                     "model_context_window_exceeded"]


class AnthropicMessage(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Annotated[AnthropicTextContent | AnthropicToolUseContent, Field(discriminator="type")]]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: AnthropicUsage


class AnthropicTokenCount(BaseModel):
    input_tokens: int


class AnthropicErrorBody(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorBody
    request_id: str | None = None


# ---- errors ------------------------------------------------------------------------------------
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


def error_body(exc: FerryError, request_id: str | None = None) -> tuple[int, dict]:
    """Anthropic's status and envelope for a Ferry error. A full queue (Ferry's 429) and a server
    that cannot take requests now (503: loading, queue timeout) are ``529 overloaded_error``,
    which Anthropic's clients retry."""
    status = 529 if isinstance(exc, Overloaded) or exc.status == 503 else exc.status
    etype = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": exc.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return status, body
