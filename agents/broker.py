"""Whether the Kafka cluster answers this worker, asked every ``PROBE_EVERY_S``.

While no server of KAFKA_BOOTSTRAP_SERVERS answers, /health/ready says so (503), the
``streamsight_kafka_reachable`` gauge is 0, and the log tells it in a few lines: the
first failure, one reminder a minute (the log's repeat window) and the recovery with how
long it lasted. The clients' own consumers keep their partitions through a stall, so
nothing else in the worker would notice.
"""

from __future__ import annotations

import time
from typing import Any

import faust
import structlog
from mode import Service

from agents import web
from streams import config
from streams.adapters import metrics
from streams.adapters.kafka import unanswered

log = structlog.get_logger(__name__)

PROBE_EVERY_S = 5.0
PROBE_TIMEOUT_S = 5.0


class BrokerWatch(Service):
    def __init__(self, settings: config.Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bootstrap = settings.kafka_bootstrap_servers
        #: When the first probe of the current outage failed (monotonic), and why.
        self.down_since: float | None = None
        self.error: str | None = None

    async def on_start(self) -> None:
        web.check("kafka", self._ready)
        web.report("kafka", lambda: {"bootstrap": self.bootstrap,
                                     "reachable": self.down_since is None,
                                     "error": self.error})

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            error = await unanswered(self.bootstrap, PROBE_TIMEOUT_S)
            now = time.monotonic()
            if error is not None:
                if self.down_since is None:
                    self.down_since = now
                self.error = error
                metrics.KAFKA_REACHABLE.set(0)
                # Every failed probe: the log's repeat window makes it a line a minute.
                log.warning("kafka.unreachable", error=error,
                            for_s=round(now - self.down_since, 1))
            else:
                if self.down_since is not None:
                    log.info("kafka.recovered", after_s=round(now - self.down_since, 1),
                             error=self.error)
                self.down_since, self.error = None, None
                metrics.KAFKA_REACHABLE.set(1)
            await self.sleep(PROBE_EVERY_S)

    async def _ready(self) -> tuple[bool, str]:
        if self.down_since is None:
            return True, f"{self.bootstrap} answers"
        return False, (f"no broker answered for {time.monotonic() - self.down_since:.0f} s "
                       f"({self.error})")


def install(app: faust.App, settings: config.Settings) -> BrokerWatch:
    watch = BrokerWatch(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(watch)
    return watch
