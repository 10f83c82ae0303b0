"""A real Redis Cluster for the tests (a pytest plugin loaded by ``tests/conftest.py``).

The session fixture ``redis_cluster`` starts three ``redis-server --cluster-enabled yes``
processes on free loopback ports (each with its own directory, cluster bus port and no
persistence), joins them with ``redis-cli --cluster create … --cluster-replicas 0``, waits for
every node to say ``cluster_state:ok``, and kills them at the end of the session.
``redis_cluster_url`` hands a test the URL of one node of an emptied Cluster (``FLUSHALL`` on
every primary); the backend finds the others from it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, free_port

__all__ = ["RedisClusterProcesses"]


class RedisClusterProcesses:
    """Three Cluster nodes (primaries, no replicas) on 127.0.0.1. With ``aof`` each keeps its
    data across :meth:`stop` and :meth:`restart` (as :class:`RedisServer` does)."""

    def __init__(self, directory: Path, size: int = 3, *, aof: bool = False) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(size):
            node_dir = directory / f"node-{i}"
            node_dir.mkdir()
            extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-port",  # the bus port; not port + 10000, which may be taken
                str(free_port()),
                "--cluster-node-timeout",
                "5000",
            )
            self.nodes.append(RedisServer(node_dir, aof=aof, extra=extra))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self, i: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[i].port, socket_timeout=10)

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (run `make sysdeps`)")
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
        self.wait_ok()

    def wait_ok(self, within: float = 30.0) -> None:
        """Poll every node's ``CLUSTER INFO`` until all say ``cluster_state:ok``."""
        deadline = time.monotonic() + within
        for i in range(len(self.nodes)):
            with self.client(i) as client:
                while True:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" in info:
                        break
                    if time.monotonic() > deadline:
                        self.stop()
                        pytest.fail(f"the Redis Cluster did not come up:\n{info}")
                    time.sleep(0.05)  # the poll interval

    def node_id(self, i: int) -> str:
        with self.client(i) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def owner_of(self, slot: int) -> int:
        """The index of the node serving ``slot``."""
        with self.client(0) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise AssertionError(f"slot {slot} is not served")

    def move_slot(self, slot: int, to: int, *, finish: bool = True) -> None:
        """Migrate ``slot`` with its keys to node ``to``, as ``redis-cli --cluster reshard``
        does: IMPORTING/MIGRATING, ``MIGRATE`` of every key, then (unless ``finish`` is
        false: the slot stays mid-migration) :meth:`finish_move`."""
        source = self.owner_of(slot)
        assert source != to
        src_id, dst_id = self.node_id(source), self.node_id(to)
        with self.client(source) as src, self.client(to) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", self.nodes[to].port, "", 0, 5000, "KEYS", *keys
                )
        if finish:
            self.finish_move(slot, to)

    def finish_move(self, slot: int, to: int) -> None:
        """Hand ``slot`` to node ``to`` on every node (the end of a migration)."""
        dst_id = self.node_id(to)
        for i in range(len(self.nodes)):
            with self.client(i) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def restart(self) -> None:
        """Start the stopped nodes again (same ports and directories: each finds its Cluster
        in its ``nodes.conf``) and wait until the Cluster is ok."""
        for node in self.nodes:
            node.start()
        self.wait_ok()

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    nodes = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """The session's Redis Cluster, emptied for this test (the URL of one of its nodes)."""
    redis_cluster.flushall()
    return redis_cluster.url
