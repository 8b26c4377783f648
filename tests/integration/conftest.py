"""Fixtures for tests that run whole worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.embedded import EmbeddedBroker
from tests.integration.harness import Worker, own_broker

WorkerFactory = Callable[..., Worker]


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (with topics.yaml applied): tests that kill workers
    must not share topics or consumer groups with other tests."""
    yield from own_broker()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start ``streamsight worker`` processes; any left running are killed afterwards."""
    started: list[Worker] = []

    def make(name: str, env: dict[str, str], agents: str = "batcher") -> Worker:
        worker = Worker(name, env, tmp_path, agents)
        started.append(worker)
        return worker.start()

    yield make
    for worker in started:
        worker.close()
