"""Shared fixtures: a real Tansu broker per session and a fresh PostgreSQL database per test.

Services that cannot start fail the test loudly; integration tests never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.adapters.db import migrate
from streams.local.embedded import (
    EmbeddedBroker,
    create_database,
    drop_database,
    ensure_postgres,
    start_broker,
)

pytest_plugins = ["tests.support.fixtures"]

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs the real services, marked or not.
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
        # The runs on Apache Kafka: make test gives them a pass of their own, with fewer
        # at once (each brings JVMs of its own on a two-core machine).
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if ("kafka" in (params.get("fresh_broker"), params.get("shared_broker"))
                or "cluster" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.on_kafka)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker (in-memory) for the session; topics left behind by tests persist."""
    embedded = start_broker()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    """Admin DSN of the server the tests create their databases on: the one that
    STREAMSIGHT_TEST_POSTGRES names (a TimescaleDB server, say), else the local scratch
    cluster, started if needed."""
    return ensure_postgres(os.environ.get("STREAMSIGHT_TEST_POSTGRES") or None)


@pytest.fixture
def database(postgres_admin_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    name = f"streamsight_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(postgres_admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(postgres_admin_dsn, name)


@pytest.fixture
async def migrated_database(database: str) -> str:
    """DSN of a new database with every migration in sql/ applied."""
    await migrate(database)
    return database
