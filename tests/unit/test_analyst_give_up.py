"""A request that fails for good goes to dead-letter naming the message it came from,
with the redrive count that message carried."""

from __future__ import annotations

from streams.adapters.openai import CallFailed, CallResult
from streams.core.breaker import CircuitBreaker
from streams.core.deadletter import REDRIVE_HEADER
from streams.core.models import AnalysisRequest, UsageOutcome
from streams.core.retry import RetryPolicy
from streams.errors import PermanentError
from streams.pipeline.analyst import Analyst
from tests.support.publisher import RecordingPublisher
from tests.support.records import Record
from tests.unit.test_reanalyze_analyst import AI, REQUEST, Nothing


class Refusing(AI):
    async def call(self, request: AnalysisRequest) -> CallResult:
        self.calls += 1
        raise CallFailed(PermanentError("400 bad request"), UsageOutcome.CLIENT_ERROR,
                         model=self.model)


async def test_give_up_names_the_origin_and_keeps_the_redrive_count() -> None:
    publisher = RecordingPublisher()
    analyst = Analyst(publisher=publisher, history=Nothing(), statuses=Nothing(),
                      ai=Refusing(), budget=None, spend=None, breaker=CircuitBreaker(5, 60),
                      policy=RetryPolicy(3))
    origin = Record(41, b"checkout", b"{}", [(REDRIVE_HEADER, b"2")], partition_=3,
                    timestamp_ms=1_700_000_000_000)
    await analyst.analyze(REQUEST, origin)

    [headers] = publisher.headers("dead-letter")
    assert headers["dlq.reason"] == b"ai_failed"
    assert (headers["dlq.origin.topic"], headers["dlq.origin.partition"],
            headers["dlq.origin.offset"]) == (b"analysis-requests", b"3", b"41")
    assert headers[REDRIVE_HEADER] == b"2"
    assert (headers["dlq.attempts"], headers["dlq.batch_id"]) == (
        b"1", REQUEST.batch_id.encode())
