"""The client's exceptions: one root, :class:`GatewayError`.

::

    GatewayError
    ├── RequestError       the gateway refused a request with an ``error`` frame; ``code`` is the
    │                      stable protocol error code (``unknown_task``, ``too_many_tasks``, …)
    ├── ConnectionLost     the connection is gone for good: a close that must not be retried
    │   │                  (4001 unauthorized, 4002 policy violation), the reconnect budget ran
    │   │                  out, or the client was closed while something still waited on it;
    │   │                  ``code`` is the WebSocket close code, if any
    │   └── CannotConnect  no connection could be opened: refused, unknown host, TLS failure,
    │                      timeout, or the handshake was refused with an HTTP ``status``
    │                      (401/403: bad token or origin)
    └── ProtocolMismatch   the server speaks a protocol version this client does not know

No other exception escapes the client's coroutines, except ``asyncio.CancelledError`` when the
caller's own task is cancelled.
"""

from __future__ import annotations

from protocol import CloseCode

__all__ = ["CannotConnect", "ConnectionLost", "GatewayError", "ProtocolMismatch", "RequestError"]


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


class CannotConnect(ConnectionLost):
    """No connection to the gateway could be opened.

    ``status`` is the HTTP status when the gateway refused the WebSocket handshake (401: no or
    bad token; 403: origin or host not allowed; 503: shutting down), else ``None`` (refused,
    unknown host, TLS error, timeout; the original exception is ``__cause__``). ``retryable``
    says whether trying again later may succeed (not for 401/403 or a certificate error)."""

    def __init__(
        self, url: str, message: str, *, status: int | None = None, retryable: bool = True
    ) -> None:
        # A refused token or origin is reported like the 4001 close it replaces.
        refused = int(CloseCode.UNAUTHORIZED) if status in (401, 403) else None
        super().__init__(f"cannot connect to {url}: {message}", code=refused)
        self.url = url
        self.status = status
        self.retryable = retryable


class ProtocolMismatch(GatewayError):
    """The gateway's ``hello`` names a protocol or major version this client does not speak."""
