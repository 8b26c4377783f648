"""The batcher agent: a FetchLoop over ``events`` driving the BatcherHandler."""

from __future__ import annotations

import asyncpg
import faust
from aiokafka import AIOKafkaProducer
from mode import Service

from streams import config
from streams.adapters.batch_store import BatchStore
from streams.adapters.fetch import FetchLoop
from streams.batcher import BatcherHandler


class BatcherService(Service):
    """Owns the batcher's database pool and producer; they outlive its FetchLoop."""

    def __init__(self, settings: config.Settings, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.handler: BatcherHandler | None = None
        self.fetch: FetchLoop | None = None

    async def on_start(self) -> None:
        s = self.settings
        self.pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=4)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.app_id}-batcher",
            acks="all",
            # Each settle sends its whole output at once and waits for it: no lingering.
            linger_ms=0,
            max_batch_size=1024 * 1024,
        )
        await self.producer.start()
        self.handler = BatcherHandler(
            store=BatchStore(self.pool),
            producer=self.producer,
            max_events=s.batch_max_events,
            max_age_seconds=s.batch_max_age_seconds,
            max_event_bytes=s.max_event_bytes,
        )
        self.fetch = FetchLoop(
            name="batcher",
            topic=config.EVENTS_TOPIC,
            group_id=f"{s.app_id}-batcher",
            bootstrap_servers=s.kafka_bootstrap_servers,
            handler=self.handler,
            max_records=s.consumer_max_records,
            session_timeout_ms=s.consumer_session_timeout_ms,
            heartbeat_interval_ms=s.consumer_heartbeat_interval_ms,
            loop=self.loop,
            beacon=self.beacon,
        )
        await self.add_runtime_dependency(self.fetch)

    async def on_shutdown(self) -> None:
        # After the FetchLoop child has drained and settled through these two.
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()


def install(app: faust.App, settings: config.Settings) -> BatcherService:
    service = BatcherService(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(service)
    return service
