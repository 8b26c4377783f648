"""The analyst agent: a FetchLoop over ``analysis-requests`` driving the AnalystHandler."""

from __future__ import annotations

from typing import Any

import structlog

from agents import web
from agents.registry import Agent
from agents.service import AgentService
from streams import config
from streams.adapters import metrics
from streams.adapters.batch_store import BatchHistory, BatchStatus
from streams.adapters.budget import DailySpend, GlobalBudget
from streams.adapters.fetch import FetchHandler
from streams.adapters.insights import InsightIndex
from streams.adapters.openai import OpenAIAnalyzer, load_prices
from streams.core.breaker import CircuitBreaker
from streams.core.retry import RetryPolicy
from streams.pipeline.analyst import MAX_WAITING, Analyst, AnalystHandler

log = structlog.get_logger(__name__)


class AnalystService(AgentService):
    def __init__(self, settings: config.Settings, declared: Agent, **kwargs: Any) -> None:
        super().__init__(settings, declared, **kwargs)
        # Read here, before the worker starts: a bad price table is a one-line error.
        self.prices = load_prices(settings.openai_prices)
        self.breaker = CircuitBreaker(settings.circuit_failure_threshold,
                                      settings.circuit_cooldown_seconds)
        self.ai: OpenAIAnalyzer | None = None

    async def build_handler(self) -> tuple[FetchHandler, int]:
        s = self.settings
        budget = spend = None
        if s.openai_api_key is not None:
            self.ai = OpenAIAnalyzer(s.openai_api_key.get_secret_value(), s.openai_base_url,
                                     s.openai_model, timeout=s.openai_timeout_seconds)
            budget = GlobalBudget(self.pool, s.ai_requests_per_minute, s.ai_tokens_per_minute)
            spend = DailySpend(self.pool, s.ai_budget_usd_per_day)
        analyst = Analyst(
            publisher=self.publisher,
            history=BatchHistory(self.pool),
            statuses=BatchStatus(self.pool),
            ai=self.ai,
            budget=budget,
            spend=spend,
            prices=self.prices,
            breaker=self.breaker,
            policy=RetryPolicy(s.ai_max_attempts),
            insights=InsightIndex(self.pool),
            topics=s.topics,
        )
        metrics.AI_DAILY_BUDGET.set(s.ai_budget_usd_per_day or 0)
        log.info("analyst.ready", analyzer=analyst.name)
        web.report("ai", lambda: {
            "analyzer": analyst.name,
            "breaker": self.breaker.state.value,
            "consecutive_failures": self.breaker.consecutive_failures,
        })
        return AnalystHandler(analyst, analyst.publisher, s.ai_max_concurrency), MAX_WAITING

    async def on_shutdown(self) -> None:
        if self.ai is not None:
            await self.ai.aclose()
        await super().on_shutdown()

