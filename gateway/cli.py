"""The ``ospark`` command: ``ospark schema``, ``ospark serve``, and the clients.

Subcommands import what they need lazily so that ``ospark schema`` works without the server's
dependencies being loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _schema(args: argparse.Namespace) -> int:
    from protocol import schema

    directory = Path(args.out) if args.out else schema.SCHEMA_DIR
    for path in schema.write(directory):
        print(f"wrote {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from gateway.server import main as serve_main
    except ImportError:
        print(
            "ospark serve: the WebSocket server (gateway/server) is not built yet; "
            "only the protocol package and `ospark schema` exist so far.",
            file=sys.stderr,
        )
        return 2
    return serve_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ospark", description="OSpark Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schema", help="write the protocol's JSON Schema files")
    p.add_argument("--out", help="directory (default: the protocol package's schema/)")
    p.set_defaults(handler=_schema)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="agent config YAML (default: the offline demo model)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes on this port (more than 1 needs --redis)",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="keep tasks in Redis so that gateways share them: redis://host:6379/0, "
        "rediss://user:password@host:6380/0, or any node of a Redis Cluster "
        "(also OSPARK_REDIS_URL; default: in memory)",
    )
    p.add_argument(
        "--shutdown-deadline",
        type=float,
        default=None,
        help="seconds running tasks may finish after SIGTERM before they are cancelled (10)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=None,
        help="seconds a connection has to send a complete request head (10)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_serve)

    from gateway.tui import add_parsers  # run, status, cancel (rich loads lazily on use)

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
