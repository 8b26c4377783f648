"""Sink agents: FetchLoops writing topics into TimescaleDB."""

from __future__ import annotations

import faust

from agents.service import AgentService
from agents.service import install as start_with
from streams import config
from streams.adapters.fetch import FetchHandler
from streams.sinks import InsightSinkHandler


class InsightSinkService(AgentService):
    agent = "sink-insights"
    topic = config.INSIGHTS_TOPIC

    async def build_handler(self) -> tuple[FetchHandler, int]:
        return InsightSinkHandler(self.pool, self.producer), self.settings.consumer_max_records


def install_insights(app: faust.App, settings: config.Settings) -> AgentService:
    return start_with(app, InsightSinkService(settings, loop=app.loop, beacon=app.beacon))
