"""The response-store contract shared by the memory and Redis stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.errors import NotFound

TERMINAL = ("completed", "failed", "incomplete", "cancelled")


@dataclass
class StoredResponse:
    """``response``: the Response object as last sent; ``items``: the conversation's input items
    as ``GET .../input_items`` lists them (previous turns' items and outputs, then this turn's
    input), each with an ``id``."""

    response: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.response["id"]

    @property
    def status(self) -> str:
        return self.response["status"]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        return {"response": self.response, "items": self.items}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredResponse:
        return cls(data["response"], data["items"])


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param=param)


class ResponseStore(Protocol):
    """Where records live; ``owner`` is ``None`` when the server has no API keys."""

    async def save(self, owner: str | None, record: StoredResponse, *,
                   update: bool = False) -> None:
        """Store ``record``; with ``update`` only if it is still there (not deleted)."""
        ...

    async def get(self, owner: str | None, response_id: str) -> StoredResponse:
        """The record, or ``NotFound`` (unknown, expired, deleted, another owner's)."""
        ...

    async def delete(self, owner: str | None, response_id: str) -> None:
        """Remove the record, or ``NotFound``."""
        ...

    async def close(self) -> None: ...
