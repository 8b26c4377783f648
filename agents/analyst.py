"""The analyst agent: a FetchLoop over ``analysis-requests`` driving the AnalystHandler."""

from __future__ import annotations

import asyncpg
import faust
import structlog
from aiokafka import AIOKafkaProducer
from mode import Service

from streams import config
from streams.adapters.batch_store import BatchHistory, BatchStatus
from streams.adapters.budget import DailySpend, GlobalBudget
from streams.adapters.fetch import FetchLoop
from streams.adapters.openai import OpenAIAnalyzer, load_prices
from streams.analyst import Analyst, AnalystHandler
from streams.core.breaker import CircuitBreaker
from streams.core.retry import RetryPolicy

log = structlog.get_logger(__name__)


class AnalystService(Service):
    """Owns the analyst's pool, producer and AI client; they outlive its FetchLoop."""

    def __init__(self, settings: config.Settings, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        # Read here, before the worker starts: a bad price table is a one-line error.
        self.prices = load_prices(settings.openai_prices)
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ai: OpenAIAnalyzer | None = None
        self.breaker = CircuitBreaker(settings.circuit_failure_threshold,
                                      settings.circuit_cooldown_seconds)

    async def on_start(self) -> None:
        s = self.settings
        self.pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=4)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.app_id}-analyst",
            acks="all",
        )
        await self.producer.start()
        budget = None
        if s.openai_api_key is not None:
            self.ai = OpenAIAnalyzer(s.openai_api_key.get_secret_value(), s.openai_base_url,
                                     s.openai_model, timeout=s.openai_timeout_seconds)
            budget = GlobalBudget(self.pool, s.ai_requests_per_minute, s.ai_tokens_per_minute)
        analyst = Analyst(
            producer=self.producer,
            history=BatchHistory(self.pool),
            statuses=BatchStatus(self.pool),
            ai=self.ai,
            budget=budget,
            spend=DailySpend(self.pool, s.ai_budget_usd_per_day) if self.ai else None,
            prices=self.prices,
            breaker=self.breaker,
            policy=RetryPolicy(s.ai_max_attempts),
        )
        log.info("analyst.ready", analyzer=analyst.name)
        fetch = FetchLoop(
            name="analyst",
            topic=config.ANALYSIS_REQUESTS_TOPIC,
            group_id=f"{s.app_id}-analyst",
            bootstrap_servers=s.kafka_bootstrap_servers,
            handler=AnalystHandler(analyst, self.producer, s.ai_max_concurrency),
            max_records=2 * s.ai_max_concurrency,
            session_timeout_ms=s.consumer_session_timeout_ms,
            heartbeat_interval_ms=s.consumer_heartbeat_interval_ms,
            loop=self.loop,
            beacon=self.beacon,
        )
        await self.add_runtime_dependency(fetch)

    async def on_shutdown(self) -> None:
        if self.ai is not None:
            await self.ai.aclose()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()


def install(app: faust.App, settings: config.Settings) -> AnalystService:
    service = AnalystService(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(service)
    return service
