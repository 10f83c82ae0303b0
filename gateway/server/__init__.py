"""The gateway server: a Starlette app served by uvicorn (``ospark serve``).

The modules: :mod:`~gateway.server.app` builds the ASGI app (:func:`create_app`, the WebSocket
endpoint and HTTP routes); :mod:`~gateway.server.runner` serves it (:class:`GatewayServer`,
:func:`serve_in_background`); :mod:`~gateway.server.main` is ``ospark serve``;
:mod:`~gateway.server.logging` formats the JSON log lines; :mod:`~gateway.server.settings`,
:mod:`~gateway.server.auth` and :mod:`~gateway.server.metrics` are what their names say.
"""

from __future__ import annotations

from gateway.server.app import Gateway, create_app
from gateway.server.logging import configure_logging
from gateway.server.main import main
from gateway.server.runner import (
    GatewayServer,
    RunningGateway,
    serve_in_background,
    tune_gc,
    uvicorn_config,
)
from gateway.server.settings import ConfigError, Settings

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayServer",
    "RunningGateway",
    "Settings",
    "configure_logging",
    "create_app",
    "main",
    "serve_in_background",
    "tune_gc",
    "uvicorn_config",
]
