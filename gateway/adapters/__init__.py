"""Adapters to open protocols over the same tasks: A2A (:mod:`.a2a`) and AG-UI (:mod:`.agui`).

Each has one translation point from our events to its standard's and the WebSocket
endpoint's auth, limits and metrics (:mod:`.common`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

if TYPE_CHECKING:
    from gateway.server.settings import Settings

__all__ = ["adapter_routes"]


def adapter_routes(settings: Settings) -> list[Route]:
    """The HTTP routes of both adapters."""
    from .a2a import a2a_routes
    from .agui import agui_routes

    return [*a2a_routes(settings), *agui_routes(settings)]
