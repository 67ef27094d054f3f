"""The chat page: static files served at ``/`` (``index.html``) and ``/ui/*`` (ES modules, CSS).

Invariants:
- Everything the page needs ships in ``ferry/ui/static``; nothing is fetched from the internet
  (no CDN, no build step). The API-key middleware lets ``GET /``, ``/index.html`` and ``/ui/*``
  through, so the page can load and then ask for the key.
- The page only talks to the public API (``/v1/models``, ``/v1/chat/completions`` with
  ``X-Conversation-Id``, ``/v1/stream/{id}``, ``/v1/streams/lookup``); it has no routes of its own.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = STATIC_DIR / "index.html"


def mount_ui(app: FastAPI) -> None:
    """Serve the chat page at ``/`` and ``/index.html``, and its assets under ``/ui/``."""

    async def index() -> FileResponse:
        # no-cache: a new Ferry version's page is picked up on the next load (assets revalidate
        # by ETag through StaticFiles).
        return FileResponse(
            INDEX, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"}
        )

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/index.html", index, methods=["GET"], include_in_schema=False)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")
