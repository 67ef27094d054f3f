"""Loaded models by id: the engine, its chat template and its limits.

Owns the model lifecycle (load at start, close at shutdown). Requests route by ``model``; a
request without ``model`` (or naming the file's own name) goes to the default chat model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ferry.engine.chat_template import ChatTemplate
from ferry.engine.engine import Engine, EngineConfig
from ferry.engine.model import Model
from ferry.errors import InvalidRequest, ModelNotFound, ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass
class ChatModel:
    id: str
    path: str
    engine: Engine
    template: ChatTemplate | None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> Model:
        return self.engine.model

    def require_template(self) -> ChatTemplate:
        if self.template is None:
            raise InvalidRequest(f"model {self.id!r} has no chat template; start Ferry with "
                                 "--chat-template or use /v1/completions", param="model")
        return self.template


def model_id_for(path: str) -> str:
    return Path(path).name.removesuffix(".gguf")


class ModelRegistry:
    def __init__(self) -> None:
        self.chat: dict[str, ChatModel] = {}
        self.default: str | None = None
        self.ready = False

    def load_chat(self, alias: str | None, path: str, cfg: EngineConfig,
                  chat_template: str | None, loop: asyncio.AbstractEventLoop) -> ChatModel:
        model = Model(path)
        engine = Engine(model, cfg)
        engine.start(loop)
        source = chat_template or model.chat_template
        template = ChatTemplate(source, model.bos_text, model.eos_text) if source else None
        mid = alias or model_id_for(path)
        cm = ChatModel(mid, path, engine, template)
        self.chat[mid] = cm
        if self.default is None:
            self.default = mid
        log.info("loaded %s from %s (n_ctx_seq=%d, slots=%d)", mid, path, engine.n_ctx_seq,
                 cfg.n_slots)
        return cm

    def get_chat(self, name: str | None) -> ChatModel:
        if not self.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly",
                                     headers={"Retry-After": "2"})
        if not name or name == "default":
            if self.default is None:
                raise ModelNotFound("no chat model is loaded", param="model")
            return self.chat[self.default]
        cm = self.chat.get(name)
        if cm is None:
            for m in self.chat.values():  # accept the file name too
                if name in (Path(m.path).name, m.path):
                    return m
            raise ModelNotFound(f"The model `{name}` does not exist", param="model")
        return cm

    def close(self) -> None:
        for m in self.chat.values():
            m.engine.stop()
            m.model.close()
