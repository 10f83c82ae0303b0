"""Every JSON example of the README's protocol reference decodes as what it documents."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from protocol import Event, ProtocolError
from protocol.codec import JSON

README = Path(__file__).resolve().parents[2] / "README.md"


def protocol_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Protocol reference")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def json_examples() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", protocol_section(), flags=re.S)


def server_examples() -> set[str]:
    section = protocol_section()
    server_part = section[section.index("### Server → client") :]
    return set(re.findall(r"```json\n(.*?)\n```", server_part, flags=re.S))


def assert_fields_known(struct: msgspec.Struct, obj: dict[str, object]) -> None:
    """Every key of the example is a field of the Struct, recursively (no misspelt field)."""
    fields = set(struct.__struct_fields__) | {"type", "kind"}
    assert set(obj) <= fields, set(obj) - fields
    for name, value in obj.items():
        child = getattr(struct, name, None)
        if isinstance(value, dict) and isinstance(child, msgspec.Struct):
            assert_fields_known(child, value)
        if isinstance(value, list):
            for item, child_item in zip(value, child or [], strict=False):
                if isinstance(item, dict) and isinstance(child_item, msgspec.Struct):
                    assert_fields_known(child_item, item)


def test_there_is_an_example_of_every_frame_and_kind() -> None:
    seen = set()
    for example in json_examples():
        obj = msgspec.json.decode(example)
        seen.add(obj.get("type") or obj["kind"])
    assert seen >= {
        "start",
        "cancel",
        "status",
        "subscribe",
        "unsubscribe",
        "ping",
        "hello",
        "accepted",
        "cancel_ack",
        "event",
        "batch",
        "gap",
        "error",
        "pong",
        "closing",
        "task_started",
        "task_progress",
        "llm_response",
        "tool_call_start",
        "tool_call_complete",
        "task_completed",
        "task_failed",
        "task_cancelled",
        "threads",
        "thread",
        "input",
        "message",
        "input_ack",
        "message_ack",
        "input_required",
        "input_received",
        "user_message",
    }


@pytest.mark.parametrize("example", json_examples())
def test_example_decodes(example: str) -> None:
    obj = msgspec.json.decode(example)
    if "kind" in obj:
        event = msgspec.json.decode(example, type=Event)
        assert type(event).__struct_config__.tag == obj["kind"]
        assert_fields_known(event, obj)
        return
    frame: msgspec.Struct
    if example in server_examples():
        frame = JSON.decode_server(example)
    else:
        frame = JSON.decode_client(example)
    assert type(frame).__struct_config__.tag == obj["type"]
    assert_fields_known(frame, obj)


def test_every_error_code_and_close_code_is_documented() -> None:
    from protocol import CloseCode, ErrorCode

    section = protocol_section()
    for code in ErrorCode:
        assert f"| `{code.value}` |" in section
    for close in CloseCode:
        assert f"| {close.value} |" in section


def test_python_session_example_runs() -> None:
    code = re.findall(r"```python\n(.*?)\n```", protocol_section(), flags=re.S)
    assert code, "the protocol section has a Python example"
    namespace: dict[str, object] = {}
    exec(compile(code[-1], "README.md", "exec"), namespace)
    assert isinstance(namespace["frame"], ProtocolError)


def table_examples(heading: str) -> dict[str, str]:
    section = protocol_section()
    part = section[section.index(heading) :]
    part = part[: part.index("\n### ", 1)] if "\n### " in part[1:] else part
    rows = {}
    for line in part.splitlines():
        if line.startswith("| `") or line.startswith("| 40"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[-1].strip("` ")
    return rows


def test_every_error_code_has_a_decodable_example() -> None:
    from protocol import ErrorCode, ErrorFrame

    examples = table_examples("### Error codes")
    assert set(examples) == {c.value for c in ErrorCode}
    for code, example in examples.items():
        frame = JSON.decode_server(example)
        assert isinstance(frame, ErrorFrame) and frame.code == code


def test_every_close_code_has_an_example() -> None:
    from protocol import CloseCode

    examples = table_examples("### Close codes")
    assert set(examples) == {str(c.value) for c in CloseCode}
    for code, example in examples.items():
        assert msgspec.json.decode(example)["code"] == int(code)
