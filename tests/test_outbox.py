"""The outbox on its own: frames in, payloads out, no event loop and no socket.

Every payload is decoded with the client's session, in both encodings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbox import LAGGING, REPLAY_FLOOD, Outbox, OutboxLimits, Payload
from protocol import (
    JSON,
    MSGPACK,
    Accepted,
    ClientSession,
    Codec,
    Event,
    EventFrame,
    Gap,
    Hello,
    LlmResponse,
    ServerSession,
    TaskCompleted,
    TaskStarted,
    ToolCallStart,
)
from protocol.session import IncomingFrame

CODECS = [JSON, MSGPACK]


def make(codec: Codec, **limits: int) -> tuple[Outbox, ClientSession]:
    server = ServerSession(codec)
    server.hello(Hello())
    client = ClientSession(codec)
    client.hello = Hello()
    return Outbox(server.send, OutboxLimits(**limits)), client


def frame(task_id: str, seq: int, event: Event) -> EventFrame:
    return EventFrame(task_id=task_id, seq=seq, ts=1.0, event=event)


def delta(task_id: str, seq: int, text: str = "", **kw: object) -> EventFrame:
    return frame(task_id, seq, LlmResponse(delta=text or f"d{seq} ", turn=1, **kw))  # type: ignore[arg-type]


def drain(outbox: Outbox) -> list[tuple[Payload, int]]:
    out = []
    while (item := outbox.take()) is not None:
        out.append(item)
    return out


def decode(client: ClientSession, payloads: list[tuple[Payload, int]]) -> list[IncomingFrame]:
    frames: list[IncomingFrame] = []
    for payload, _ in payloads:
        got = client.receive(payload)
        assert not isinstance(got, Exception)
        frames.extend(got)
    return frames


def is_batch(codec: Codec, payload: Payload) -> bool:
    decoded = codec.decode_any(payload)
    assert isinstance(decoded, dict)
    return bool(decoded["type"] == "batch")


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_a_client_that_keeps_up_gets_one_event_per_frame(codec: Codec) -> None:
    outbox, client = make(codec)
    outbox.add_event(frame("t", 1, TaskStarted()))
    outbox.add_event(delta("t", 2))
    outbox.add_reply(Accepted(id="r1", task_id="u"))
    outbox.add_event(delta("t", 3))
    out = drain(outbox)
    assert [n for _, n in out] == [1, 1, 0, 1]
    assert not any(is_batch(codec, p) for p, _ in out)
    frames = decode(client, out)
    assert [type(f).__name__ for f in frames] == [
        "EventFrame",
        "EventFrame",
        "Accepted",
        "EventFrame",
    ]
    assert [f.seq for f in frames if isinstance(f, EventFrame)] == [1, 2, 3]
    assert outbox.live_bytes == 0 and len(outbox) == 0


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_a_burst_is_batched(codec: Codec) -> None:
    outbox, client = make(codec, batch_after=4, max_batch=3)
    for seq in range(1, 8):
        outbox.add_event(frame("t", seq, ToolCallStart(call_id=f"c{seq}", server="s", tool="x")))
    out = drain(outbox)
    # 7 waiting: batches of 3 while 4 or more wait, then the rest alone.
    assert [n for _, n in out] == [3, 3, 1]
    assert [is_batch(codec, p) for p, _ in out] == [True, True, False]
    assert [f.seq for f in decode(client, out) if isinstance(f, EventFrame)] == list(range(1, 8))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_events_added_while_the_socket_is_stalled_are_batched(codec: Codec) -> None:
    outbox, client = make(codec)
    outbox.add_event(frame("t", 1, TaskStarted()))
    outbox.begin_write()
    first = outbox.take()
    assert first is not None and first[1] == 1  # it went alone
    # The writer waits on the socket; meanwhile two more events come.
    outbox.add_event(frame("t", 2, ToolCallStart(call_id="c", server="s", tool="x")))
    outbox.add_event(frame("u", 1, TaskStarted()))
    second = outbox.take()
    assert second is not None and second[1] == 2 and is_batch(codec, second[0])
    assert outbox.take() is None
    outbox.end_write()
    # Caught up: single events again.
    outbox.add_event(frame("t", 3, TaskCompleted()))
    outbox.add_event(frame("u", 2, TaskCompleted()))
    assert [n for _, n in drain(outbox)] == [1, 1]
    assert [f.seq for f in decode(client, [first, second])] == [1, 2, 1]  # type: ignore[union-attr]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_deltas_merge_only_while_the_client_lags(codec: Codec) -> None:
    outbox, client = make(codec, merge_after=2)
    outbox.add_event(frame("t", 1, TaskStarted()))
    outbox.add_event(delta("t", 2, "a"))
    outbox.add_event(delta("t", 3, "b"))  # not writing: no merge
    assert len(outbox) == 3
    outbox.begin_write()
    outbox.add_event(delta("t", 4, "c"))  # merged into seq 3
    outbox.add_event(delta("t", 5, "d", channel="reasoning"))  # another stream: kept apart
    outbox.add_event(delta("t", 6, "e", channel="reasoning"))  # merged into seq 5
    outbox.add_event(frame("t", 7, ToolCallStart(call_id="c", server="s", tool="x")))
    outbox.add_event(delta("t", 8, "f", channel="reasoning"))  # not across the tool call
    outbox.add_event(delta("u", 1, "g"))  # another task
    outbox.add_event(delta("u", 2, "h"))  # merged into u/1
    assert outbox.events_merged == 3
    frames = [f for f in decode(client, drain(outbox)) if isinstance(f, EventFrame)]
    got = [
        (f.task_id, f.seq, f.event.delta if isinstance(f.event, LlmResponse) else "-")
        for f in frames
    ]
    assert got == [
        ("t", 1, "-"),
        ("t", 2, "a"),
        ("t", 4, "bc"),  # the merged frame carries the later seq
        ("t", 6, "de"),
        ("t", 7, "-"),
        ("t", 8, "f"),
        ("u", 2, "gh"),
    ]
    assert outbox.live_bytes == 0


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_no_merge_into_a_taken_frame_or_across_a_gap(codec: Codec) -> None:
    outbox, client = make(codec, merge_after=1)
    outbox.begin_write()
    outbox.add_event(delta("t", 1, "a"))
    assert outbox.take() is not None  # on its way to the socket
    outbox.add_event(delta("t", 2, "b"))
    outbox.add_reply(Gap(task_id="t", first_available_seq=5, after_seq=2))
    outbox.add_event(delta("t", 5, "c"))
    frames = decode(client, drain(outbox))
    assert [type(f).__name__ for f in frames] == ["EventFrame", "Gap", "EventFrame"]
    assert outbox.events_merged == 0


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_live_backlog_bound_counts_only_while_the_socket_is_stalled(codec: Codec) -> None:
    outbox, _ = make(codec, max_outbox=10)
    tool = ToolCallStart(call_id="c", server="s", tool="x")
    # The writer has not had its turn yet: the burst may reach four times the bound.
    verdicts = [outbox.add_event(frame("t", seq, tool)) for seq in range(1, 41)]
    assert verdicts == [None] * 40
    assert outbox.add_event(frame("t", 41, tool)) is LAGGING
    outbox.clear()
    outbox.begin_write()  # now the socket is stalled: the bound itself applies
    verdicts = [outbox.add_event(frame("t", seq, tool)) for seq in range(1, 11)]
    assert verdicts == [None] * 10
    assert outbox.add_event(frame("t", 11, tool)) is LAGGING


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_byte_budget(codec: Codec) -> None:
    outbox, _ = make(codec, max_outbox_bytes=10_000, merge_after=1_000)
    outbox.begin_write()
    assert outbox.add_event(delta("t", 1, "x" * 5_000)) is None
    assert outbox.add_event(delta("t", 2, "x" * 5_000)) is LAGGING


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_replay_has_its_own_bound_and_live_text_joining_it_counts_as_live(codec: Codec) -> None:
    outbox, _ = make(codec, max_outbox=2, max_replay=5, merge_after=1)
    outbox.begin_write()
    tool = ToolCallStart(call_id="c", server="s", tool="x")
    for seq in range(1, 6):  # five replayed events: past the live bound, within the replay one
        assert outbox.add_event(frame("t", seq, tool), replay=True) is None
    assert outbox.replay_items == 5 and outbox.live_bytes == 0
    assert outbox.add_event(frame("t", 6, tool), replay=True) is REPLAY_FLOOD
    outbox.clear()
    outbox.begin_write()
    outbox.add_event(delta("u", 1, "a"), replay=True)
    outbox.add_event(delta("u", 2, "b"))  # live text merged into the replayed delta
    assert outbox.events_merged == 1
    assert outbox.replay_items == 0 and outbox.live_bytes > 0
    drain(outbox)
    assert outbox.replay_items == 0 and outbox.live_bytes == 0


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_drop_task_forgets_only_that_task(codec: Codec) -> None:
    outbox, client = make(codec)
    outbox.add_event(frame("t", 1, TaskStarted()), replay=True)
    outbox.add_reply(Accepted(id="r", task_id="t"))
    outbox.add_event(frame("u", 1, TaskStarted()))
    outbox.add_event(delta("t", 2))
    outbox.drop_task("t")
    frames = decode(client, drain(outbox))
    assert [(type(f).__name__, getattr(f, "task_id", None)) for f in frames] == [
        ("Accepted", "t"),
        ("EventFrame", "u"),
    ]
    assert outbox.live_bytes == 0 and outbox.replay_items == 0


# --------------------------------------------------------------------------- properties

_step = st.one_of(
    st.tuples(st.just("delta"), st.sampled_from("tu"), st.sampled_from(["text", "reasoning"])),
    st.tuples(st.just("tool"), st.sampled_from("tu"), st.none()),
    st.tuples(st.just("take"), st.none(), st.none()),
    st.tuples(st.just("begin"), st.none(), st.none()),
    st.tuples(st.just("end"), st.none(), st.none()),
)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@settings(max_examples=100, deadline=None)
@given(steps=st.lists(_step, max_size=120), replay=st.booleans())
def test_nothing_is_lost_reordered_or_duplicated(
    codec: Codec, steps: list[tuple[str, str | None, str | None]], replay: bool
) -> None:
    outbox, client = make(codec, merge_after=2, batch_after=3, max_batch=4)
    seqs = {"t": 0, "u": 0}
    sent: dict[str, list[tuple[str, str]]] = {"t": [], "u": []}  # (kind, text) in order
    payloads: list[tuple[Payload, int]] = []
    for action, task_id, channel in steps:
        if action in ("delta", "tool"):
            assert task_id is not None
            seqs[task_id] += 1
            seq = seqs[task_id]
            if action == "delta":
                text = f"{task_id}{seq};"
                event: Event = LlmResponse(delta=text, channel=channel, turn=1)  # type: ignore[arg-type]
                sent[task_id].append((f"d:{channel}", text))
            else:
                event = ToolCallStart(call_id=f"c{seq}", server="s", tool="x")
                sent[task_id].append(("tool", ""))
            assert outbox.add_event(frame(task_id, seq, event), replay=replay) is None
        elif action == "take":
            item = outbox.take()
            if item is not None:
                payloads.append(item)
        elif action == "begin":
            outbox.begin_write()
        else:
            payloads.extend(drain(outbox))
            outbox.end_write()
    payloads.extend(drain(outbox))
    assert outbox.live_bytes == 0 and outbox.replay_items == 0
    for payload, _ in payloads:  # each one exactly what encoding its frame gives
        assert codec.to_wire(codec.encode(codec.decode_server(payload))) == payload
    assert sum(n for _, n in payloads) + outbox.events_merged == sum(seqs.values())
    frames = [f for f in decode(client, payloads) if isinstance(f, EventFrame)]
    for task_id in "tu":
        mine = [f for f in frames if f.task_id == task_id]
        got_seqs = [f.seq for f in mine]
        assert got_seqs == sorted(set(got_seqs))
        assert (got_seqs[-1] if got_seqs else 0) == seqs[task_id]
        # Merging only joins consecutive deltas of one stream: the sequence of (kind, text)
        # runs is the same.
        got: list[tuple[str, str]] = []
        for f in mine:
            if isinstance(f.event, LlmResponse):
                got.append((f"d:{f.event.channel}", f.event.delta))
            else:
                got.append(("tool", ""))
        assert _runs(got) == _runs(sent[task_id])


def _runs(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive deltas of one stream (tool calls stay apart)."""
    out: list[tuple[str, str]] = []
    for kind, text in items:
        if out and kind != "tool" and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out
