"""Consumer lag in the worker's /metrics and /health/detailed, read from the broker."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from mode import Service

from agents import web
from streams import config
from streams.adapters.lag import LagReader, agent_groups
from streams.adapters.metrics import LAG


class LagService(Service):
    """Reads lag every LAG_INTERVAL_SECONDS on a thread of its own (the admin calls
    block), so that scrapes and the event loop never wait for the broker."""

    def __init__(self, settings: config.Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="lag")
        self._reader: LagReader | None = None

    async def on_start(self) -> None:
        s = self.settings
        self._reader = LagReader(s.kafka_bootstrap_servers,
                                 agent_groups(s.app_id, config.AGENT_TOPICS),
                                 client_id=f"{s.app_id}-lag")
        web.report("lag", LAG.summary)

    @Service.task
    async def _refresh(self) -> None:
        reader = self._reader
        assert reader is not None, "started"
        while not self.should_stop:
            await asyncio.get_running_loop().run_in_executor(self._thread, LAG.refresh, reader)
            await self.sleep(self.settings.lag_interval_seconds)

    async def on_stop(self) -> None:
        # The reading in flight finishes before its consumer closes.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
        if self._reader is not None:
            self._reader.close()


def install(app: faust.App, settings: config.Settings) -> LagService:
    service = LagService(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(service)
    return service
