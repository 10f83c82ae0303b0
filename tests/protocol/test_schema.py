"""The checked-in JSON Schema matches what the Structs generate (`ospark schema`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from protocol import schema


@pytest.mark.parametrize("name", ["client.json", "server.json"])
def test_checked_in_schema_is_current(name: str) -> None:
    checked_in = (schema.SCHEMA_DIR / name).read_text(encoding="utf-8")
    assert checked_in == schema.render(schema.schemas()[name]), (
        f"protocol/schema/{name} is stale: run `ospark schema` (or `make schema`) and commit it"
    )


def test_ospark_schema_command_writes_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    for name in ("client.json", "server.json"):
        assert (tmp_path / name).read_text() == (schema.SCHEMA_DIR / name).read_text()
    assert "client.json" in capsys.readouterr().out


def test_schema_covers_every_frame_type() -> None:
    server = schema.schemas()["server.json"]
    assert set(server["$defs"]) >= {
        "Hello",
        "Accepted",
        "CancelAck",
        "StatusReply",
        "EventFrame",
        "Batch",
        "Gap",
        "ErrorFrame",
        "Pong",
        "Closing",
        "TaskCompleted",
        "LlmResponse",
    }
