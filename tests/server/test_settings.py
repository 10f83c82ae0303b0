"""``OSPARK_TOKENS`` as people write it, and the anonymous principal kept apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.server import Settings, serve_in_background
from gateway.server.settings import ANONYMOUS_PRINCIPAL, ConfigError, parse_tokens
from protocol import Accepted, StatusReply, StatusRequest
from tests.server.helpers import Client, demo_config
from tests.server.test_hardening import handshake_status

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


@pytest.mark.parametrize(
    "written",
    [f"alice:{ALICE} bob:{BOB}", f"alice:{ALICE},bob:{BOB}", f" alice:{ALICE} ,\n bob:{BOB} "],
    ids=["spaces", "commas", "mixed"],
)
async def test_space_separated_tokens_each_name_their_principal(
    tmp_path: Path, written: str
) -> None:
    s = Settings.from_env(
        {"OSPARK_TOKENS": written}, port=0, agent_config=demo_config(tmp_path, 0), web_root=None
    )
    async with serve_in_background(s) as gw:
        for token, principal in ((ALICE, "alice"), (BOB, "bob")):
            client = await Client.connect(gw.url, headers={"Authorization": f"Bearer {token}"})
            assert client.hello is not None and client.hello.principal == principal
            await client.close()
        # The two entries joined are not a token of anyone.
        assert await handshake_status(gw.port, {}, f"/ws?token={ALICE}%20bob:{BOB}") == 401


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("alice", "principal:token"),
        (f"alice:{ALICE} bob", "principal:token"),
        ("alice:short", "shorter than 16"),
        (f"al/ice:{ALICE}", "bad principal"),
        (f"local:{ALICE}", "reserved"),
        (f"alice:{ALICE},bob:{ALICE}", "two principals"),
    ],
)
def test_malformed_tokens_are_refused_clearly(written: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        Settings.from_env({"OSPARK_TOKENS": written})
    assert ALICE not in str(info.value)


def test_the_file_form_still_reads() -> None:
    assert parse_tokens(f"# team\nalice {ALICE}\nbob:{BOB}  # ops\n", "tokens.txt") == {
        ALICE: "alice",
        BOB: "bob",
    }


def test_a_configured_principal_cannot_be_the_anonymous_one() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        Settings(tokens={ALICE: ANONYMOUS_PRINCIPAL}, allow_anonymous=True)


async def test_anonymous_clients_do_not_see_a_token_principals_tasks(tmp_path: Path) -> None:
    s = Settings(
        port=0,
        agent_config=demo_config(tmp_path, 0),
        web_root=None,
        tokens={ALICE: "alice"},
        allow_anonymous=True,
    )
    async with serve_in_background(s) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        rid = await alice.start("What is 1+1?", task_id="mine")
        await alice.reply(rid, Accepted)
        anonymous = await Client.connect(gw.url)
        assert anonymous.hello is not None
        assert anonymous.hello.principal == ANONYMOUS_PRINCIPAL != "alice"
        await anonymous.send(StatusRequest(id="all"))
        assert (await anonymous.reply("all", StatusReply)).tasks == []
        await alice.until_finished(["mine"])
        for c in (alice, anonymous):
            await c.close()
