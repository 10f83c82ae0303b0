"""Logging of a gateway process: one JSON object per line on stderr, secrets redacted.

Secrets never reach a log line: ``?token=`` (and ``access_token``, ``api_key``, ``key``,
``password``) query values and ``Bearer`` credentials are replaced by ``[redacted]``, by a
filter on uvicorn's loggers (its ``"WebSocket /ws?token=…" [accepted]`` and access lines, in
every process that serves the gateway, embedded or not) and again on every JSON line written.
uvicorn's ``color_message`` (the same message with ANSI colours) is not carried into JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

__all__ = ["RedactSecrets", "configure_logging", "install_redaction", "redact"]

_SECRET = re.compile(
    r"(?i)(?P<key>\b(?:token|access_token|api_key|apikey|key|password)=)[^&\s\"'#;,\\]+"
    r"|(?P<scheme>\bbearer\s+)[^\s\"',;\\]+"
)


def redact(text: str) -> str:
    """``text`` with secret-looking query values and bearer credentials replaced."""
    if "=" not in text and "earer" not in text:
        return text
    return _SECRET.sub(lambda m: (m.group("key") or m.group("scheme")) + "[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record whose message holds a secret (and drops its ``color_message``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
            record.__dict__.pop("color_message", None)
        return True


_REDACTION = RedactSecrets()


def install_redaction() -> None:
    """Redact the records of uvicorn's loggers, whatever handlers the program has."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                if isinstance(value, int | float | bool):
                    out[key] = value
                else:
                    out[key] = redact(value if isinstance(value, str) else repr(value))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    install_redaction()
