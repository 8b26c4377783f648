"""The analyst asks ``insights`` before an AI call: a request whose insight is stored
already costs nothing (a redrive, a replay, a re-sent batch)."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.adapters.openai import CallResult
from streams.core.breaker import CircuitBreaker
from streams.core.models import (
    Analysis,
    AnalysisRequest,
    Digest,
    InsightSeverity,
    SealReason,
)
from streams.core.retry import RetryPolicy
from streams.pipeline.analyst import Analyst
from tests.support.publisher import RecordingPublisher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = AnalysisRequest(
    batch_id="3f2c1a9e-0000-4000-8000-000000000001", key="checkout", topic="events",
    partition=0, first_offset=0, last_offset=9, event_count=10, seal_reason=SealReason.COUNT,
    opened_at=T0, sealed_at=T0, first_event_at=T0, last_event_at=T0,
    digest=Digest(by_type={}, by_status={}, by_severity={}, error_count=0, top_errors=[],
                  latency=None, routes={}, users=0, samples=[]),
    event_ids=[],
)
ANALYSIS = Analysis(summary="fine", severity=InsightSeverity.INFO, confidence=0.9,
                    patterns=[], anomalies=[], recommendations=[])


class AI:
    name = "openai:gpt-4o-mini/v1"
    model = "gpt-4o-mini"
    max_completion_tokens = 100

    def __init__(self) -> None:
        self.calls = 0

    def token_estimate(self, request: AnalysisRequest) -> int:
        return 10

    async def call(self, request: AnalysisRequest) -> CallResult:
        self.calls += 1
        return CallResult(ANALYSIS, self.model, 10, 5, 1.0)


class Insights:
    def __init__(self, stored: bool) -> None:
        self.stored = stored
        self.asked: list[tuple[str, str, datetime]] = []

    async def exists(self, batch_id: str, analyzer: str, window_start: datetime) -> bool:
        self.asked.append((batch_id, analyzer, window_start))
        return self.stored


class Nothing:
    async def before(self, source: str, until: datetime) -> list[Digest]:
        return []

    async def set(self, batch_id: str, first_event_at: datetime, status: str) -> None:
        return None


def analyst(ai: AI, publisher: RecordingPublisher, insights: Insights | None) -> Analyst:
    return Analyst(publisher=publisher, history=Nothing(), statuses=Nothing(), ai=ai,
                   budget=None, spend=None, breaker=CircuitBreaker(5, 60),
                   policy=RetryPolicy(3), insights=insights)


async def test_a_stored_insight_skips_the_call() -> None:
    ai, publisher, insights = AI(), RecordingPublisher(), Insights(stored=True)
    await analyst(ai, publisher, insights).analyze(REQUEST)
    assert ai.calls == 0 and publisher.sent == []
    assert insights.asked == [(REQUEST.batch_id, AI.name, T0)]


async def test_no_stored_insight_calls_and_publishes() -> None:
    ai, publisher = AI(), RecordingPublisher()
    await analyst(ai, publisher, Insights(stored=False)).analyze(REQUEST)
    assert ai.calls == 1 and publisher.topics() == ["insights"]


async def test_without_an_index_every_request_is_called() -> None:
    ai, publisher = AI(), RecordingPublisher()
    await analyst(ai, publisher, None).analyze(REQUEST)
    assert ai.calls == 1
