"""Fixtures for tests that run whole worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Broker, Worker, own_broker

WorkerFactory = Callable[..., Worker]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``kafka`` run twice, on Tansu and on Apache Kafka: what we claim
    about Kafka is shown on Kafka."""
    if "fresh_broker" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("kafka")
        if marker is None:
            kinds = ["tansu"]
        else:
            kinds = ["kafka"] if marker.kwargs.get("only") else ["tansu", "kafka"]
        metafunc.parametrize("fresh_broker", kinds, indirect=True)


@pytest.fixture
def fresh_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A broker of this test's own (with topics.yaml applied): tests that kill workers
    must not share topics or consumer groups with other tests."""
    yield from own_broker(request.param)


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
