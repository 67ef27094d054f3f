"""Request models of the OpenAI Responses API (``POST /v1/responses`` and friends).

Bounds here are the API contract: a violation is a 400 naming the parameter (``input.0.content``,
``text.format.type``, ...). Unknown fields are ignored, as for chat. Only what Ferry can honour is
accepted: function tools (not OpenAI's hosted tools), text/image/function items (not files).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

INCLUDABLE = Literal[
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content",
    "message.output_text.logprobs"]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Req):
    type: Literal["input_text"]
    text: str


class InputImage(_Req):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] = "auto"


class OutputText(_Req):
    type: Literal["output_text"]
    text: str


class Refusal(_Req):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


def _text_as_parts(v: Any) -> Any:
    """A string stands for one text part (errors then name the part, not a union branch)."""
    return [{"type": "input_text", "text": v}] if isinstance(v, str) else v


class MessageItem(_Req):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: list[Part]

    _content = field_validator("content", mode="before")(_text_as_parts)


class FunctionCallItem(_Req):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)
    arguments: str


class FunctionCallOutputItem(_Req):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1, max_length=64)
    output: str | list[Part]


class ItemReference(_Req):
    type: Literal["item_reference"] | None = "item_reference"
    id: str


def _item_kind(v: Any) -> str | None:
    if isinstance(v, BaseModel):
        return getattr(v, "type", None) or "item_reference"
    if not isinstance(v, dict):
        return None
    return v.get("type") or ("message" if "role" in v else "item_reference")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ItemReference, Tag("item_reference")],
    Discriminator(_item_kind),
]


class FunctionTool(_Req):
    """The Responses API's flat function tool (chat nests it under ``function``)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(None, strict=True)


class ToolChoiceFunction(_Req):
    type: Literal["function"]
    name: str


class FormatText(_Req):
    type: Literal["text"]


class FormatJsonObject(_Req):
    type: Literal["json_object"]


class FormatJsonSchema(_Req):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = Field(None, strict=True)


class TextParam(_Req):
    format: Annotated[FormatText | FormatJsonObject | FormatJsonSchema,
                      Field(discriminator="type")] = FormatText(type="text")
    verbosity: Literal["low", "medium", "high"] | None = None


class _Input(_Req):
    """What decides the prompt: shared by ``POST /v1/responses`` and ``/input_tokens``."""

    model: str | None = None
    input: list[InputItem] | None = None  # a string is one user message
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = Field(None, strict=True)
    text: TextParam | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, v: Any) -> Any:
        return [{"type": "message", "role": "user", "content": v}] if isinstance(v, str) else v


class CreateResponseRequest(_Input):
    max_output_tokens: int | None = Field(None, ge=16)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    metadata: dict[str, str] | None = None
    store: bool | None = Field(True, strict=True)
    background: bool | None = Field(False, strict=True)
    stream: bool | None = Field(False, strict=True)
    include: list[INCLUDABLE] | None = None
    user: str | None = None
    # llama.cpp / vLLM extensions, as on chat
    seed: int | None = None
    ignore_eos: bool = Field(False, strict=True)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("metadata holds at most 16 key-value pairs")
        for k, s in v.items():
            if len(k) > 64:
                raise ValueError(f"metadata key {k[:20]!r}... is longer than 64 characters")
            if len(s) > 512:
                raise ValueError(f"metadata value of {k!r} is longer than 512 characters")
        return v

    @property
    def logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or ())


class InputTokensRequest(_Input):
    pass


# -- what the routes answer (documented in /openapi.json) ---------------------------------------


class ResponseObject(BaseModel):
    """The Responses API's response object (the spec's ``Response``)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
    model: str
    output: list[dict[str, Any]]
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    usage: dict[str, Any] | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


class ResponseItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str
    last_id: str


class InputTokenCount(BaseModel):
    object: Literal["response.input_tokens"]
    input_tokens: int
