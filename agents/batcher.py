"""The batcher agent: a FetchLoop over ``events`` driving the BatcherHandler."""

from __future__ import annotations

from agents.service import AgentService
from streams.adapters.batch_store import BatchStore
from streams.adapters.fetch import FetchHandler
from streams.pipeline.batcher import BatcherHandler


class BatcherService(AgentService):
    async def build_handler(self) -> tuple[FetchHandler, int]:
        s = self.settings
        handler = BatcherHandler(
            store=BatchStore(self.pool),
            publisher=self.publisher,
            max_events=s.batch_max_events,
            max_age_seconds=s.batch_max_age_seconds,
            max_event_bytes=s.max_event_bytes,
            topics=s.topics,
        )
        return handler, s.consumer_max_records

