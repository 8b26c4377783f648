"""Sink agents: FetchLoops writing topics into TimescaleDB."""

from __future__ import annotations

from collections.abc import Iterable

from agents.service import AgentService
from streams.adapters.copy import Row
from streams.adapters.fetch import FetchHandler
from streams.pipeline.sinks import (
    SinkHandler,
    Split,
    array_items,
    error_rows,
    insight_rows,
    one_record,
    performance_rows,
)


class SinkService(AgentService):
    #: How a message of the topic splits into records.
    split: Split = staticmethod(array_items)

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        """The (table, row) pairs of one message."""
        raise NotImplementedError

    async def build_handler(self) -> tuple[FetchHandler, int]:
        handler = SinkHandler(self.topic, self.rows_of, self.split, self.pool, self.publisher,
                              self.settings.topics.dead_letter)
        return handler, self.settings.consumer_max_records


class InsightSink(SinkService):
    split = staticmethod(one_record)

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return insight_rows(value)


class ErrorSink(SinkService):

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return error_rows(value)


class PerformanceSink(SinkService):

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return performance_rows(value)

