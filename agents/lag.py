"""Consumer lag in the worker's /metrics and /health/detailed, read from the broker in a
child process (streams/adapters/lag_process.py), so that a librdkafka crash costs one
reading, not the worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from mode import Service

from agents import web
from agents.registry import topics_read
from streams import config
from streams.adapters.lag import agent_groups
from streams.adapters.lag_process import LagProcess
from streams.adapters.metrics import LAG


class LagService(Service):
    """Reads lag every LAG_INTERVAL_SECONDS in a child process, so that scrapes and the
    event loop never wait for the broker and a client crash cannot end the worker."""

    def __init__(self, settings: config.Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._reader: LagProcess | None = None

    async def on_start(self) -> None:
        s = self.settings
        self._reader = LagProcess(s.kafka_bootstrap_servers,
                                  agent_groups(s.app_id, topics_read(s.topics)),
                                  f"{s.app_id}-lag")
        web.report("lag", LAG.summary)

    @Service.task
    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            assert self._reader is not None, "started"
            await loop.run_in_executor(None, LAG.refresh, self._reader)
            await self.sleep(self.settings.lag_interval_seconds)

    async def on_stop(self) -> None:
        if self._reader is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._reader.close)


def install(app: faust.App, settings: config.Settings) -> LagService:
    service = LagService(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(service)
    return service
