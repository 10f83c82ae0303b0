"""The client's exceptions: one root, :class:`GatewayError`.

- :class:`RequestError` — the gateway refused a request with an ``error`` frame; ``code``
  is the stable protocol error code (``unknown_task``, ``too_many_tasks``, …).
- :class:`ConnectionLost` — the connection is gone for good: a close that must not be retried
  (4001 unauthorized, 4002 policy violation), the reconnect budget ran out, or the client was
  closed while something still waited on it. ``code`` is the WebSocket close code, if any.
- :class:`ProtocolMismatch` — the server speaks a protocol version this client does not know.
"""

from __future__ import annotations

__all__ = ["ConnectionLost", "GatewayError", "ProtocolMismatch", "RequestError"]


class GatewayError(Exception):
    """Root of every exception raised by :mod:`gateway.client`."""


class RequestError(GatewayError):
    """The gateway answered a request with an ``error`` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | int | None = None,
        task_id: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.task_id = task_id
        self.field = field


class ConnectionLost(GatewayError):
    """The connection to the gateway is closed and will not be re-established."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ProtocolMismatch(GatewayError):
    """The gateway's ``hello`` names a protocol or major version this client does not speak."""
