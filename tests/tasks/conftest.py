"""Fixtures of the task tests: every backend the contract has, and scripted runners.

``backend`` is parametrised over the backend implementations; each test that takes it runs
once per backend: in memory, on one Redis, and on a Redis Cluster of three nodes (the same
Redis backend, which finds out that it talks to a Cluster)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest

from gateway.tasks import InMemoryBackend, Retention, TaskBackend
from gateway.tasks.redis_backend import RedisBackend, RedisConfig
from gateway.testing import ScriptedRunner
from tests.tasks.helpers import BackendFactory


def _memory(retention: Retention | None = None) -> TaskBackend:
    return InMemoryBackend(retention)


def _redis(retention: Retention | None = None, *, url: str = "") -> TaskBackend:
    # Started by its first call that needs Redis (the session's real redis-server).
    return RedisBackend(RedisConfig(url=url), retention)


FACTORIES: dict[str, BackendFactory] = {
    "memory": _memory,
    "redis": _redis,
    "redis-cluster": _redis,
}
_URLS = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}


@pytest.fixture(params=sorted(FACTORIES))
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """Makes backends of one kind (``make_backend(retention)``); closes them afterwards."""
    made: list[TaskBackend] = []
    factory = FACTORIES[request.param]
    if request.param in _URLS:
        url = request.getfixturevalue(_URLS[request.param])
        factory = functools.partial(_redis, url=url)

    def make(retention: Retention | None = None) -> TaskBackend:
        backend = factory(retention)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
def backend(make_backend: BackendFactory) -> TaskBackend:
    """A backend with the default retention."""
    return make_backend()


@pytest.fixture
def script() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def held() -> ScriptedRunner:
    return ScriptedRunner(hold=True)
