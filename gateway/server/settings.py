"""Settings of the gateway server, from arguments and the environment.

Environment variables (all optional):

- ``OSPARK_TOKENS``: ``principal:token`` pairs separated by commas or whitespace;
- ``OSPARK_TOKENS_FILE``: a file with one ``principal:token`` (or ``principal token``) per
  line, ``#`` comments allowed;
- ``OSPARK_ALLOWED_ORIGINS``: extra browser origins allowed to connect (comma-separated;
  same-origin pages and non-browser clients are always allowed);
- ``OSPARK_ALLOW_ANONYMOUS``: ``1`` to accept connections without a token on a non-loopback
  address (not recommended);
- ``OSPARK_CONFIG``: the agent configuration YAML (default: the built-in demo config);
- ``OSPARK_REDIS_URL``: keep tasks in Redis (``redis://[user:password@]host:port/db`` or
  ``rediss://``) so that several gateway processes share them (default: in memory);
- ``OSPARK_REDIS_LEASE``: seconds after which a silent gateway process is declared lost and
  its tasks end with ``node_lost`` (10);
- ``OSPARK_REDIS_BUFFER_SECONDS``: seconds of Redis outage after which running tasks are
  stopped with ``store_unavailable`` (30).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gateway.connection import ConnectionSettings
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


def parse_tokens(text: str, source: str = "OSPARK_TOKENS") -> dict[str, str]:
    """``principal:token`` entries → ``{token: principal}``."""
    tokens: dict[str, str] = {}
    for raw in text.replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        principal, sep, token = line.partition(":")
        if not sep:
            principal, _, token = line.partition(" ")
        principal, token = principal.strip(), token.strip()
        if not principal or not token:
            raise ConfigError(f"{source}: expected `principal:token`, got {line!r}")
        if len(token) < 16:
            raise ConfigError(f"{source}: the token of {principal!r} is shorter than 16 characters")
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
    agent_config: str | None = None
    """Path of the agent configuration YAML (None: the built-in demo config)."""
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    tasks: TaskManagerConfig = field(default_factory=TaskManagerConfig)
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
        self.sync_limits()

    def sync_limits(self) -> None:
        """Make the limits announced in ``hello`` match the task manager's."""
        limits = self.connection.limits
        if limits.max_tasks_per_principal != self.tasks.max_tasks_per_owner:
            self.connection.limits = msgspec.structs.replace(
                limits, max_tasks_per_principal=self.tasks.max_tasks_per_owner
            )

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
        anonymous = env.get("OSPARK_ALLOW_ANONYMOUS")
        settings = cls(
            tokens=tokens,
            allowed_origins=origins,
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
