"""Settings of the gateway server, from arguments and the environment.

Environment variables (all optional):

- ``OSPARK_TOKENS``: ``principal:token`` entries separated by commas or whitespace;
- ``OSPARK_TOKENS_FILE``: a file of ``principal:token`` entries (or one ``principal token``
  per line), ``#`` comments allowed;

Principals are 1-64 letters, digits and ``_.@-``; ``local`` is reserved for connections
without a token. Tokens are 16-512 printable ASCII characters without spaces. Malformed input
is refused with a :class:`ConfigError` naming the entry (never echoing a token).
- ``OSPARK_ALLOWED_ORIGINS``: extra browser origins allowed to connect (comma-separated;
  same-origin pages and non-browser clients are always allowed);
- ``OSPARK_ALLOWED_HOSTS``: extra ``Host`` names trusted like loopback names on a loopback
  address (comma-separated; e.g. the public name a local reverse proxy forwards);
- ``OSPARK_ALLOW_ANONYMOUS``: ``1`` to accept connections without a token on a non-loopback
  address (not recommended);
- ``OSPARK_CONFIG``: the agent configuration YAML (default: the built-in demo config);
- ``OSPARK_REDIS_URL``: keep tasks in Redis (``redis://[user:password@]host:port/db`` or
  ``rediss://``) so that several gateway processes share them (default: in memory); the URL
  of any node of a Redis Cluster works too (the Cluster is detected, database 0 only);
- ``OSPARK_REDIS_LEASE``: seconds after which a silent gateway process is declared lost and
  its tasks end with ``node_lost`` (10);
- ``OSPARK_REDIS_BUFFER_SECONDS``: seconds of Redis outage after which running tasks are
  stopped with ``store_unavailable`` (30).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gateway.connection import ConnectionSettings
from gateway.server.protocols import TransportLimits
from gateway.tasks import TaskManagerConfig

__all__ = ["ANONYMOUS_PRINCIPAL", "ConfigError", "Settings", "is_loopback", "parse_tokens"]

ANONYMOUS_PRINCIPAL = "local"
"""The principal of connections without a token (loopback only, unless allowed)."""


class ConfigError(ValueError):
    """The server's settings are invalid or unsafe; the message says what to change."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")  # printable ASCII, no spaces


def _entries(text: str, source: str) -> Iterator[tuple[str, str, str]]:
    """``(principal, token, as written)`` for every entry of ``text``.

    Entries are ``principal:token``, separated by commas, spaces or newlines; a line of exactly
    two words whose first has no ``:`` is ``principal token`` (the file form). ``#`` starts a
    comment that runs to the end of the line."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0]
        words = line.replace(",", " ").split()
        if len(words) == 2 and ":" not in words[0]:
            yield words[0], words[1], line.strip()
            continue
        for word in words:
            principal, sep, token = word.partition(":")
            if not sep:
                shown = word if len(word) < 16 else word[:4] + "…"  # it may be a token
                raise ConfigError(
                    f"{source}: expected `principal:token` entries separated by commas or "
                    f"spaces, got {shown!r}"
                )
            yield principal, token, word


def parse_tokens(text: str, source: str = "OSPARK_TOKENS") -> dict[str, str]:
    """``principal:token`` entries → ``{token: principal}``; :class:`ConfigError` names the
    first malformed entry (the token itself is never echoed)."""
    tokens: dict[str, str] = {}
    for principal, token, written in _entries(text, source):
        shown = written.replace(token, "…") if token else written
        if not _PRINCIPAL.fullmatch(principal):
            raise ConfigError(
                f"{source}: bad principal in {shown!r}: 1-64 letters, digits, `_.@-`, "
                "starting with a letter or digit"
            )
        if principal == ANONYMOUS_PRINCIPAL:
            raise ConfigError(
                f"{source}: the principal name {ANONYMOUS_PRINCIPAL!r} is reserved for "
                "connections without a token; choose another name"
            )
        if len(token) < 16:
            raise ConfigError(f"{source}: the token of {principal!r} is shorter than 16 characters")
        if not _TOKEN.fullmatch(token):
            raise ConfigError(
                f"{source}: the token of {principal!r} must be 16-512 printable ASCII "
                "characters without spaces"
            )
        if token in tokens and tokens[token] != principal:
            raise ConfigError(f"{source}: one token is given to two principals")
        tokens[token] = principal
    return tokens


@dataclass(slots=True)
class Settings:
    """Everything the server needs; :meth:`from_env` fills it from the environment."""

    host: str = "127.0.0.1"
    port: int = 8000
    tokens: dict[str, str] = field(default_factory=dict)
    """token → principal."""
    allow_anonymous: bool | None = None
    """Accept connections without a token; default: only when bound to loopback."""
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed besides the gateway's own."""
    allowed_hosts: frozenset[str] = frozenset()
    """``Host`` names trusted besides loopback names (lower case, without port)."""
    agent_config: str | None = None
    """Path of the agent configuration YAML (None: the built-in demo config)."""
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    tasks: TaskManagerConfig = field(default_factory=TaskManagerConfig)
    transport: TransportLimits = field(default_factory=TransportLimits)
    """Bounds below the application: request-head timeout, fragments, unread pongs."""
    heartbeat_timeout: float = 20.0
    """Seconds a client has to answer a WebSocket ping."""
    shutdown_deadline: float = 10.0
    """On SIGTERM: seconds running tasks may still finish before they are cancelled."""
    redis_url: str | None = None
    """Keep tasks in this Redis (see :mod:`gateway.tasks.redis_backend`); None: in memory."""
    redis_lease: float = 10.0
    """Seconds after which a silent gateway process is lost (Redis mode)."""
    redis_buffer_seconds: float = 30.0
    """Seconds of Redis outage after which running tasks are stopped (Redis mode)."""
    web_root: Path | None = field(
        default_factory=lambda: Path(__file__).resolve().parents[1] / "web"
    )
    """Directory served at ``/`` (the web demo); None to serve none."""

    def __post_init__(self) -> None:
        if ANONYMOUS_PRINCIPAL in self.tokens.values():
            # Anonymous connections act as `local`: a token principal of that name would share
            # its tasks with every client that has no token.
            raise ConfigError(
                f"the principal name {ANONYMOUS_PRINCIPAL!r} is reserved for connections without "
                "a token; choose another name"
            )
        self.sync_limits()

    def sync_limits(self) -> None:
        """Make the limits announced in ``hello`` match the task manager's."""
        limits, tasks = self.connection.limits, self.tasks
        synced = msgspec.structs.replace(
            limits,
            max_tasks_per_principal=tasks.max_tasks_per_owner,
            max_pending_messages=tasks.max_pending_messages,
            max_queued_per_thread=tasks.max_queued_per_thread,
        )
        if synced != limits:
            self.connection.limits = synced

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ) if env is None else env
        tokens: dict[str, str] = {}
        if env.get("OSPARK_TOKENS"):
            tokens.update(parse_tokens(env["OSPARK_TOKENS"]))
        if env.get("OSPARK_TOKENS_FILE"):
            path = Path(env["OSPARK_TOKENS_FILE"])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"OSPARK_TOKENS_FILE: cannot read {path}: {exc}") from exc
            tokens.update(parse_tokens(text, str(path)))
        origins = frozenset(
            o.strip().rstrip("/")
            for o in env.get("OSPARK_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        )
        hosts = frozenset(
            h.strip().lower() for h in env.get("OSPARK_ALLOWED_HOSTS", "").split(",") if h.strip()
        )
        anonymous = env.get("OSPARK_ALLOW_ANONYMOUS")
        settings = cls(
            tokens=tokens,
            allowed_origins=origins,
            allowed_hosts=hosts,
            allow_anonymous=None
            if anonymous is None
            else anonymous.lower() in ("1", "true", "yes"),
            agent_config=env.get("OSPARK_CONFIG") or None,
            redis_url=env.get("OSPARK_REDIS_URL") or None,
        )
        for name, var in (
            ("redis_lease", "OSPARK_REDIS_LEASE"),
            ("redis_buffer_seconds", "OSPARK_REDIS_BUFFER_SECONDS"),
        ):
            if env.get(var):
                try:
                    seconds = float(env[var])
                except ValueError:
                    raise ConfigError(f"{var}: expected seconds, got {env[var]!r}") from None
                if not seconds > 0:
                    raise ConfigError(f"{var}: must be positive, got {env[var]!r}")
                setattr(settings, name, seconds)
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        settings.sync_limits()
        return settings

    @property
    def anonymous_allowed(self) -> bool:
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return not self.tokens and is_loopback(self.host)

    def check(self) -> None:
        """Refuse unsafe settings: a non-loopback address needs tokens."""
        if not is_loopback(self.host) and not self.tokens and not self.allow_anonymous:
            raise ConfigError(
                f"refusing to listen on {self.host} without authentication: set OSPARK_TOKENS "
                "(principal:token,...) or OSPARK_TOKENS_FILE, or bind to 127.0.0.1"
            )
