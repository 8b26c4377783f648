"""What every agent has: a database pool, a publisher and a FetchLoop over its topic."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from mode import Service

from agents import web
from agents.registry import Agent
from streams import config
from streams.adapters.fetch import FetchHandler, FetchLoop
from streams.adapters.publish import Publisher


class AgentService(Service):
    """Owns an agent's pool and publisher, which outlive its FetchLoop child: the loop
    settles through them while it stops."""

    def __init__(self, settings: config.Settings, declared: Agent, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        #: Short name: consumer group ``<APP_ID>-<name>``, log field ``loop``.
        self.agent = declared.name
        #: The topic the agent reads.
        self.topic = declared.topic(settings.topics)
        self._pool: asyncpg.Pool | None = None
        self._publisher: Publisher | None = None
        self.fetch: FetchLoop | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "started"
        return self._pool

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None, "started"
        return self._publisher

    async def build_handler(self) -> tuple[FetchHandler, int]:
        """The handler for the FetchLoop and the most messages it takes per fetch."""
        raise NotImplementedError

    async def on_start(self) -> None:
        s = self.settings
        self._pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=4)
        self._publisher = await Publisher.start(s.kafka_bootstrap_servers,
                                                f"{s.app_id}-{self.agent}")
        handler, max_records = await self.build_handler()
        fetch = FetchLoop(
            name=self.agent,
            topic=self.topic,
            group_id=f"{s.app_id}-{self.agent}",
            bootstrap_servers=s.kafka_bootstrap_servers,
            handler=handler,
            max_records=max_records,
            session_timeout_ms=s.consumer_session_timeout_ms,
            heartbeat_interval_ms=s.consumer_heartbeat_interval_ms,
            protocol=s.consumer_group_protocol,
            instance_id=f"{s.worker_id}-{self.agent}" if s.worker_id else None,
            loop=self.loop,
            beacon=self.beacon,
        )
        # Its crash goes to the agent's supervisor too, instead of ending the worker.
        fetch.supervisor = self.supervisor
        self.fetch = fetch
        await self.add_runtime_dependency(fetch)
        self._report(fetch)

    def _report(self, fetch: FetchLoop) -> None:
        """Readiness and details of this agent's consumer and database."""
        pool = self.pool

        async def kafka() -> tuple[bool, str]:
            if not fetch.rebalanced:
                return False, f"waiting for partitions of {fetch.topic} ({fetch.group_id})"
            return True, f"{len(fetch.assigned)} partition(s) of {fetch.topic}"

        async def database() -> tuple[bool, str]:
            started = time.perf_counter()
            await pool.fetchval("SELECT 1")
            return True, f"answered in {(time.perf_counter() - started) * 1000:.1f} ms"

        web.check(f"kafka:{self.agent}", kafka)
        web.check("postgresql", database)
        web.report(f"kafka:{self.agent}", lambda: {
            "group": fetch.group_id, "topic": fetch.topic,
            "partitions": sorted(fetch.assigned), "rebalanced": fetch.rebalanced,
            "first_fetch_at": fetch.first_fetch_at,
        })

    async def on_shutdown(self) -> None:
        if self._publisher is not None:
            await self._publisher.stop()
        if self._pool is not None:
            await self._pool.close()
