"""Fixtures of the task tests: every backend the contract has, and scripted runners.

``backend`` is parametrised over the backend implementations; each test that takes it runs
once per backend (the Redis backend adds its parameter here)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.tasks import InMemoryBackend, Retention, TaskBackend
from gateway.testing import ScriptedRunner
from tests.tasks.helpers import BackendFactory


def _memory(retention: Retention | None = None) -> TaskBackend:
    return InMemoryBackend(retention)


FACTORIES: dict[str, BackendFactory] = {"memory": _memory}


@pytest.fixture(params=sorted(FACTORIES))
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """Makes backends of one kind (``make_backend(retention)``); closes them afterwards."""
    made: list[TaskBackend] = []
    factory = FACTORIES[request.param]

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
