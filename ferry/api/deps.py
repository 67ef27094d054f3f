"""What routes take as dependencies: the app's state, typed, and the model leases of a request.

``Leases`` holds every model a request acquired (``await leases.chat(name)``) until the endpoint
returns (``scope="function"``: before the response is sent). A held model is never evicted; from
then on the engine's own queue keeps it busy until its sequences finish. The route names the
model itself, from its already-validated body, so the body is parsed once and the model looked up
once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from ferry.app import AppState
    from ferry.services.models import ChatModel


def app_state(request: Request) -> AppState:
    """The application's state (``ferry.app.AppState``); the one place that reads it."""
    return request.app.state.ferry


class Leases:
    def __init__(self, request: Request, state: AppState, stack: AsyncExitStack) -> None:
        self._request = request
        self._state = state
        self._stack = stack

    async def chat(self, name: str | None) -> ChatModel:
        """The chat model ``name`` (None = the default), loaded if needed and held: 404 if
        unknown, 400 if not a chat model, 503 while the server is still loading."""
        cm: ChatModel = await self._stack.enter_async_context(
            self._state.models.acquire(name, "chat"))
        self._request.scope.setdefault("state", {})["model"] = cm.id  # for the access log
        return cm


async def _leases(request: Request) -> AsyncIterator[Leases]:
    async with AsyncExitStack() as stack:
        yield Leases(request, app_state(request), stack)


Lease = Annotated[Leases, Depends(_leases, scope="function")]
