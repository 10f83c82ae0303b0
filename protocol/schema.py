"""JSON Schema of the wire protocol, generated from the Structs.

``ospark schema`` writes ``protocol/schema/client.json`` (client → server frames) and
``protocol/schema/server.json`` (server → client frames); a test fails when the checked-in
files differ from what the Structs generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from protocol.frames import PROTOCOL_VERSION, ClientFrame, ServerFrame

__all__ = ["SCHEMA_DIR", "render", "schemas", "write"]

SCHEMA_DIR = Path(__file__).parent / "schema"


def schemas() -> dict[str, dict[str, Any]]:
    """The schema of each direction, keyed by file name."""
    out: dict[str, dict[str, Any]] = {}
    for name, frame_type, title in (
        ("client.json", ClientFrame, "OSpark client → server frame"),
        ("server.json", ServerFrame, "OSpark server → client frame"),
    ):
        schema = msgspec.json.schema(frame_type)
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{title} (protocol v{PROTOCOL_VERSION})",
            **schema,
        }
    return out


def render(schema: dict[str, Any]) -> str:
    """Stable text of a schema (sorted keys, two-space indent, final newline)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write both schemas into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths
