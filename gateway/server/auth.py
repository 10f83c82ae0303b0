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

from gateway.server.settings import ANONYMOUS_PRINCIPAL, Settings

__all__ = ["AuthResult", "authenticate"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    principal: str | None
    """The authenticated principal, or None when refused."""
    reason: str = ""
    """Why it was refused (sent as the close reason)."""


def _origin_allowed(origin: str, host: str | None, settings: Settings) -> bool:
    origin = origin.rstrip("/")
    if origin in settings.allowed_origins or "*" in settings.allowed_origins:
        return True
    netloc = urlsplit(origin).netloc
    return bool(host) and netloc.lower() == (host or "").lower()


def _find_principal(token: str, settings: Settings) -> str | None:
    found = None
    for known, principal in settings.tokens.items():
        # Compare with every token in constant time so timing tells nothing.
        if hmac.compare_digest(known.encode(), token.encode()):
            found = principal
    return found


def authenticate(headers: Headers, query: QueryParams, settings: Settings) -> AuthResult:
    """Authenticate a WebSocket handshake."""
    origin = headers.get("origin")
    if origin is not None and not _origin_allowed(origin, headers.get("host"), settings):
        return AuthResult(None, f"origin {origin} is not allowed")
    token = None
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    elif query.get("token"):
        token = query["token"]
    if token is not None:
        principal = _find_principal(token, settings)
        if principal is None:
            return AuthResult(None, "invalid token")
        return AuthResult(principal)
    if settings.anonymous_allowed:
        return AuthResult(ANONYMOUS_PRINCIPAL)
    return AuthResult(None, "a token is required (Authorization: Bearer … or ?token=)")
