"""Who is connecting: bearer tokens, the ``?token=`` fallback for browsers, and ``Origin``.

Tokens name principals; a principal sees and controls only its own tasks, across all its
connections. Browsers cannot set headers on a WebSocket, so they pass ``?token=``. The
``Origin`` check protects browser users from cross-site WebSocket hijacking: a page of another
site may not open a socket with the user's ambient credentials. Clients that send no
``Origin`` (wscat, services) are not browsers and are not restricted by it.

Everything is decided on the handshake's headers, before the upgrade: a refused WebSocket gets
an HTTP ``401`` (missing or invalid token) or ``403`` (origin or host not allowed) and never a
``101``, so an unauthenticated client cannot make the server buffer a single frame.

The same ``Host`` rule guards the plain HTTP routes (:class:`HostGuard`): on a loopback
address a request without a valid token must name a loopback host (or one of
``OSPARK_ALLOWED_HOSTS``), so a DNS-rebinding page cannot read ``/metrics`` or ``/healthz``;
off loopback, with tokens configured, ``/metrics`` needs a token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.server.settings import ANONYMOUS_PRINCIPAL, Settings, is_loopback

__all__ = ["AuthResult", "HostGuard", "authenticate", "check_http"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    principal: str | None
    """The authenticated principal, or None when refused."""
    reason: str = ""
    """Why it was refused (the body of the HTTP refusal)."""
    status: int = 200
    """The HTTP status of a refusal: 401 (no or a bad token) or 403 (origin or host)."""


def _refused(reason: str, status: int) -> AuthResult:
    return AuthResult(None, reason, status)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(host: str) -> str:
    """``Host`` header → host name, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_allowed(origin: str, host: str, trusted_host: bool, settings: Settings) -> bool:
    origin = origin.rstrip("/")
    if origin in settings.allowed_origins or "*" in settings.allowed_origins:
        return True
    # Same origin as the page the gateway served, but only when the Host itself can be trusted:
    # a DNS-rebound attacker's page has a matching Origin and Host of its own choosing.
    return trusted_host and urlsplit(origin).netloc.lower() == host.strip().lower()


def _find_principal(token: str, settings: Settings) -> str | None:
    found = None
    for known, principal in settings.tokens.items():
        # Compare with every token in constant time so timing tells nothing.
        if hmac.compare_digest(known.encode(), token.encode()):
            found = principal
    return found


def _token(headers: Headers, query: QueryParams) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get("token") or None


def _host_trusted(host: str, settings: Settings) -> bool:
    """A loopback name, or one the operator listed (a reverse proxy's public name)."""
    name = _hostname(host)
    return name in _LOOPBACK_NAMES or name in settings.allowed_hosts


def authenticate(headers: Headers, query: QueryParams, settings: Settings) -> AuthResult:
    """Authenticate a WebSocket handshake."""
    token = _token(headers, query)
    host = headers.get("host", "")
    trusted_host = _host_trusted(host, settings)
    origin = headers.get("origin")
    if origin is not None and not _origin_allowed(
        origin, host, trusted_host or token is not None, settings
    ):
        return _refused("origin not allowed", 403)
    if token is not None:
        principal = _find_principal(token, settings)
        if principal is None:
            return _refused("invalid token", 401)
        return AuthResult(principal)
    if settings.anonymous_allowed:
        if is_loopback(settings.host) and not trusted_host:
            # Served on loopback without tokens: a Host that is not a loopback name means a
            # browser was pointed here by a rebound DNS name.
            return _refused("host not allowed", 403)
        return AuthResult(ANONYMOUS_PRINCIPAL)
    return _refused("a token is required (Authorization: Bearer … or ?token=)", 401)


def check_http(headers: Headers, query: QueryParams, path: str, settings: Settings) -> AuthResult:
    """May this plain HTTP request be answered? (The principal is not needed: ``""``.)"""
    token = _token(headers, query)
    valid = token is not None and _find_principal(token, settings) is not None
    if valid:
        return AuthResult("")
    if is_loopback(settings.host) and not _host_trusted(headers.get("host", ""), settings):
        return _refused("host not allowed", 403)
    if path == "/metrics" and settings.tokens and not is_loopback(settings.host):
        return _refused("a token is required (Authorization: Bearer …)", 401)
    return AuthResult("")


class HostGuard:
    """ASGI middleware applying :func:`check_http` to every HTTP request (WebSocket
    handshakes are judged by :func:`authenticate` in the endpoint)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/ws":
            # A plain GET of the WebSocket URL says whether its handshake would be accepted
            # (426) or why not (401/403): browsers see a refused handshake only as a 1006.
            verdict = authenticate(
                Headers(scope=scope), QueryParams(scope["query_string"]), self.settings
            )
            status = 426 if verdict.principal is not None else verdict.status
            reason = "upgrade to a WebSocket" if verdict.principal is not None else verdict.reason
            await PlainTextResponse(reason, status_code=status)(scope, receive, send)
            return
        if scope["type"] == "http":
            verdict = check_http(
                Headers(scope=scope),
                QueryParams(scope["query_string"]),
                scope["path"],
                self.settings,
            )
            if verdict.principal is None:
                response = PlainTextResponse(verdict.reason, status_code=verdict.status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
