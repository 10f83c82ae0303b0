"""Authentication, the Origin allow-list, and principals seeing only their own tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import websockets

from gateway.server import Settings, serve_in_background
from gateway.server.settings import ConfigError, parse_tokens
from protocol import Accepted, Cancel, CancelAck, ErrorFrame, StatusReply, StatusRequest, Subscribe
from tests.server.helpers import Client, demo_config
from tests.server.test_hardening import handshake_status

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


def settings(tmp_path: Path) -> Settings:
    return Settings(
        port=0,
        agent_config=demo_config(tmp_path, 20),
        web_root=None,
        tokens={ALICE: "alice", BOB: "bob"},
        allowed_origins=frozenset({"https://app.example"}),
    )


async def refused_with(url: str, **kw: object) -> int:
    """The HTTP status of a handshake the server refuses (it never upgrades)."""
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, **kw):  # type: ignore[arg-type]
            pass
    return info.value.response.status_code


async def test_missing_and_wrong_tokens_are_refused(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        assert await refused_with(gw.url) == 401
        assert await refused_with(gw.url + "?token=wrong-token-0000000000") == 401
        assert (
            await refused_with(
                gw.url, additional_headers={"Authorization": "Bearer nope-nope-nope-nope"}
            )
            == 401
        )
        ok = await Client.connect(gw.url, headers={"Authorization": f"Bearer {ALICE}"})
        assert ok.hello is not None and ok.hello.principal == "alice"
        await ok.close()
        browser = await Client.connect(gw.url + f"?token={BOB}")
        assert browser.hello is not None and browser.hello.principal == "bob"
        await browser.close()


async def test_origin_allow_list(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        url = gw.url + f"?token={ALICE}"
        assert await refused_with(url, origin="https://evil.example") == 403
        allowed = await Client.connect(url, origin="https://app.example")
        await allowed.close()
        same_origin = await Client.connect(url, origin=f"http://127.0.0.1:{gw.port}")
        await same_origin.close()


async def test_a_principal_cannot_touch_another_principals_task(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        bob = await Client.connect(gw.url + f"?token={BOB}")
        rid = await alice.start("What is 17*23+4?", task_id="secret")
        await alice.reply(rid, Accepted)

        await bob.send(Cancel(id="c", task_id="secret"))
        assert (await bob.reply("c", CancelAck)).result == "unknown"
        await bob.send(Subscribe(id="s", task_id="secret"))
        assert (await bob.reply("s", ErrorFrame)).code == "unknown_task"
        await bob.send(StatusRequest(id="st", task_id="secret"))
        assert (await bob.reply("st", ErrorFrame)).code == "unknown_task"
        await bob.send(StatusRequest(id="all"))
        assert (await bob.reply("all", StatusReply)).tasks == []
        # Bob may use the same task id for a task of his own, unrelated to Alice's.
        rid = await bob.start("What is 1+1?", task_id="secret")
        assert (await bob.reply(rid, Accepted)).existing is False

        # Alice, from another connection, sees and controls her task.
        alice2 = await Client.connect(gw.url + f"?token={ALICE}")
        await alice2.send(StatusRequest(id="mine"))
        assert [t.task_id for t in (await alice2.reply("mine", StatusReply)).tasks] == ["secret"]
        await alice2.send(Cancel(id="c2", task_id="secret"))
        assert (await alice2.reply("c2", CancelAck)).result in ("accepted", "already_terminal")
        await alice.until_finished(["secret"])
        for c in (alice, alice2, bob):
            await c.close()


def test_refuses_non_loopback_without_tokens() -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        Settings(host="0.0.0.0").check()
    Settings(host="0.0.0.0", tokens={ALICE: "alice"}).check()
    Settings(host="127.0.0.1").check()
    assert Settings(host="127.0.0.1").anonymous_allowed
    assert not Settings(host="127.0.0.1", tokens={ALICE: "alice"}).anonymous_allowed


def test_token_parsing() -> None:
    assert parse_tokens(f"alice:{ALICE}, bob:{BOB}") == {ALICE: "alice", BOB: "bob"}
    assert parse_tokens(f"# comment\nalice {ALICE}\n") == {ALICE: "alice"}
    with pytest.raises(ConfigError, match="shorter than 16"):
        parse_tokens("alice:short")
    with pytest.raises(ConfigError, match="principal:token"):
        parse_tokens("alice")


async def test_dns_rebinding_is_refused(tmp_path: Path) -> None:
    """A page of attacker.example whose name was rebound to 127.0.0.1 sends its own Host and a
    matching Origin: without a token that must not pass on a loopback gateway."""
    s = Settings(port=0, agent_config=demo_config(tmp_path, 20), web_root=None)
    async with serve_in_background(s) as gw:
        rebound = f"attacker.example:{gw.port}"
        origin = f"http://{rebound}"
        assert await handshake_status(gw.port, {"Host": rebound, "Origin": origin}) == 403
        assert await handshake_status(gw.port, {"Host": rebound}) == 403
        own = f"127.0.0.1:{gw.port}"
        assert await handshake_status(gw.port, {"Host": own, "Origin": f"http://{own}"}) == 101
        # The gateway's own page (and non-browser clients) still connect.
        ok = await Client.connect(gw.url, origin=f"http://127.0.0.1:{gw.port}")
        await ok.close()
        ok = await Client.connect(gw.url.replace("127.0.0.1", "localhost"))
        await ok.close()


async def test_a_huge_origin_is_refused_cleanly(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        assert await refused_with(gw.url, origin="https://" + "x" * 300 + ".example") == 403
