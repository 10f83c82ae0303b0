"""Several real `ospark serve` processes on a real Redis Cluster of three nodes.

The same gateways and clients as ``test_multinode.py`` (whose tests run here again, this
module's ``nodes`` fixture pointing them at the Cluster): each gateway is given the URL of one
Cluster node, finds out that it is a Cluster and finds the other nodes from it.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from protocol import Accepted, StatusReply, StatusRequest, TaskCompleted
from tests.redis_cluster import RedisClusterProcesses
from tests.server import test_multinode as single
from tests.server.test_multinode import (
    ROOT,
    Node,
    StartNode,
    _serve_fails,
    _start_node,
    request,
    started,
)


@pytest.fixture
async def nodes(tmp_path: Path, redis_cluster_url: str) -> AsyncIterator[StartNode]:
    started: list[Node] = []

    async def start(*extra: str, pace_ms: int = 60) -> Node:
        node = await _start_node(tmp_path, redis_cluster_url, *extra, pace_ms=pace_ms)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close_clients()
        node.kill()
        await node.proc.wait()


test_start_on_a_resume_and_cancel_on_b = single.test_start_on_a_resume_and_cancel_on_b
test_start_is_idempotent_across_gateways = single.test_start_is_idempotent_across_gateways
test_another_principal_sees_nothing_on_any_gateway = (
    single.test_another_principal_sees_nothing_on_any_gateway
)
test_kill_9_of_a_gateway_mid_stream_ends_its_tasks_with_node_lost = (
    single.test_kill_9_of_a_gateway_mid_stream_ends_its_tasks_with_node_lost
)
test_sigterm_of_one_gateway_while_the_other_keeps_serving = (
    single.test_sigterm_of_one_gateway_while_the_other_keeps_serving
)


async def test_tasks_of_many_owners_on_every_cluster_node(
    nodes: StartNode, redis_cluster: RedisClusterProcesses
) -> None:
    # alice's and bob's keys live where their slots are; both work through either gateway.
    a, b = await nodes(), await nodes()
    for principal in ("alice", "bob"):
        on_a = await a.client(principal)
        accepted = await on_a.reply(await on_a.start("What is 6*7?"), Accepted)
        task = str(accepted.task_id)
        await on_a.until_finished([task])
        assert isinstance(on_a.events[task][-1].event, TaskCompleted)
        on_b = await b.client(principal)
        reply = await request(on_b, StatusRequest, task_id=task)
        assert isinstance(reply, StatusReply) and reply.tasks[0].state == "completed"
        # Stored on the node serving the principal's slot.
        key = f"osp:{{{principal}}}:t:{task}"
        with redis_cluster.client(redis_cluster.owner_of(key_slot(key.encode()))) as client:
            assert client.hget(key, "state") == b"completed"


def readme_cluster_command() -> list[str]:
    """The command of the README's "Redis Cluster" section, as words."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Redis Cluster") :]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.strip().splitlines()[0], comments=True)


async def test_the_readme_cluster_command_serves(
    tmp_path: Path, redis_cluster: RedisClusterProcesses, redis_cluster_url: str
) -> None:
    words = readme_cluster_command()
    assert words[:2] == ["ospark", "serve"]
    # Its host and node, made this machine's: loopback, and the test Cluster's first node.
    words[words.index("--host") + 1] = "127.0.0.1"
    at = words.index("--redis") + 1
    words[at] = words[at].replace("redis-node-1:7000", f"127.0.0.1:{redis_cluster.nodes[0].port}")
    node = await _start_node(tmp_path, "redis://127.0.0.1:1/0", *words[2:])
    try:
        client = await node.client()
        task = await started(client, "What is 7*6?")
        await client.until_finished([task])
        assert isinstance(client.events[task][-1].event, TaskCompleted)
    finally:
        await node.close_clients()
        node.kill()
        await node.proc.wait()


async def test_a_cluster_node_with_another_database_is_refused(
    redis_cluster: RedisClusterProcesses,
) -> None:
    url = redis_cluster.url.removesuffix("/0") + "/1"
    code, err = await _serve_fails("--redis", url)
    assert code == 2 and "a Cluster has database 0 only" in err and "Traceback" not in err
