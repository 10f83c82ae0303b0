"""Who is connecting: bearer tokens, the ``?token=`` fallback for browsers, and ``Origin``.

Tokens name principals; a principal sees and controls only its own tasks, across all its
connections. Browsers cannot set headers on a WebSocket, so they pass ``?token=``. The
``Origin`` check protects browser users from cross-site WebSocket hijacking: a page of another
site may not open a socket with the user's ambient credentials. Clients that send no
``Origin`` (wscat, services) are not browsers and are not restricted by it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

from gateway.server.settings import ANONYMOUS_PRINCIPAL, Settings, is_loopback

__all__ = ["AuthResult", "authenticate"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    principal: str | None
    """The authenticated principal, or None when refused."""
    reason: str = ""
    """Why it was refused (sent as the close reason)."""


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


def authenticate(headers: Headers, query: QueryParams, settings: Settings) -> AuthResult:
    """Authenticate a WebSocket handshake."""
    token = None
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    elif query.get("token"):
        token = query["token"]
    host = headers.get("host", "")
    loopback_host = _hostname(host) in _LOOPBACK_NAMES
    origin = headers.get("origin")
    if origin is not None and not _origin_allowed(
        origin, host, loopback_host or token is not None, settings
    ):
        return AuthResult(None, "origin not allowed")
    if token is not None:
        principal = _find_principal(token, settings)
        if principal is None:
            return AuthResult(None, "invalid token")
        return AuthResult(principal)
    if settings.anonymous_allowed:
        if is_loopback(settings.host) and not loopback_host:
            # Served on loopback without tokens: a Host that is not a loopback name means a
            # browser was pointed here by a rebound DNS name.
            return AuthResult(None, "host not allowed")
        return AuthResult(ANONYMOUS_PRINCIPAL)
    return AuthResult(None, "a token is required (Authorization: Bearer … or ?token=)")
