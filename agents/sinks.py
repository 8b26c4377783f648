"""Sink agents: FetchLoops writing topics into TimescaleDB."""

from __future__ import annotations

from collections.abc import Iterable

import faust

from agents.service import AgentService
from agents.service import install as start_with
from streams import config
from streams.adapters.fetch import FetchHandler
from streams.sinks import Row, SinkHandler, error_rows, insight_rows, performance_rows


class SinkService(AgentService):
    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        """The (table, row) pairs of one message."""
        raise NotImplementedError

    async def build_handler(self) -> tuple[FetchHandler, int]:
        handler = SinkHandler(self.topic, self.rows_of, self.pool, self.producer)
        return handler, self.settings.consumer_max_records


class InsightSink(SinkService):
    agent = "sink-insights"
    topic = config.INSIGHTS_TOPIC

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return insight_rows(value)


class ErrorSink(SinkService):
    agent = "sink-errors"
    topic = config.ERRORS_TOPIC

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return error_rows(value)


class PerformanceSink(SinkService):
    agent = "sink-performance"
    topic = config.PERFORMANCE_TOPIC

    def rows_of(self, value: bytes) -> Iterable[tuple[str, Row]]:
        return performance_rows(value)


def install_insights(app: faust.App, settings: config.Settings) -> AgentService:
    return start_with(app, InsightSink(settings, loop=app.loop, beacon=app.beacon))


def install_errors(app: faust.App, settings: config.Settings) -> AgentService:
    return start_with(app, ErrorSink(settings, loop=app.loop, beacon=app.beacon))


def install_performance(app: faust.App, settings: config.Settings) -> AgentService:
    return start_with(app, PerformanceSink(settings, loop=app.loop, beacon=app.beacon))
