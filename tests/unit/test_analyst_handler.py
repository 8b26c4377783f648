"""The analyst's handler holds the line: a request whose analysis raises for a reason in
the request goes to dead-letter and the others go on; a fault that is not in the request
stops the agent (its supervisor restarts it) instead of being dead-lettered."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from streams.core.breaker import CircuitBreaker
from streams.core.models import AnalysisRequest
from streams.core.retry import RetryPolicy
from streams.errors import DataRejected, PermanentError
from streams.pipeline.analyst import Analyst, AnalystHandler
from tests.support.publisher import RecordingPublisher
from tests.support.records import Record
from tests.unit.test_reanalyze_analyst import REQUEST, Nothing

_encode = msgspec.json.Encoder().encode


class Picky(Analyst):
    """Analyses like the real one, but for requests of the sources named here."""

    failures: dict[str, BaseException]

    async def analyze(self, request: AnalysisRequest, origin: Any = None) -> None:
        failure = self.failures.get(request.key)
        if failure is not None:
            raise failure
        self.done.append(request.key)


def handler_with(
    failures: dict[str, BaseException],
) -> tuple[AnalystHandler, RecordingPublisher, Picky]:
    publisher = RecordingPublisher()
    analyst = Picky(publisher=publisher, history=Nothing(), statuses=Nothing(), ai=None,
                    budget=None, spend=None, breaker=CircuitBreaker(5, 60),
                    policy=RetryPolicy(3))
    analyst.failures = failures
    analyst.done = []  # type: ignore[attr-defined]
    return AnalystHandler(analyst, publisher, 2), publisher, analyst


def request_from(key: str) -> bytes:
    return _encode(msgspec.structs.replace(REQUEST, key=key))


async def settled(handler: AnalystHandler, until: int) -> dict[int, int]:
    for _ in range(200):
        offsets = await handler.settle()
        if offsets[0] >= until:
            return offsets
        await asyncio.sleep(0)
    raise AssertionError(f"stuck at {offsets}")


async def test_a_request_that_makes_analysis_raise_costs_only_itself() -> None:
    handler, publisher, analyst = handler_with({
        "buggy": ZeroDivisionError("division by zero"),
        "refused": DataRejected("writing batches: value out of range", "value out of range"),
    })
    await handler.assigned({0: 0})
    records = [Record(i, key.encode(), request_from(key))
               for i, key in enumerate(["a", "buggy", "refused", "b"])]
    handler.records(0, records, 0.0)  # type: ignore[arg-type]

    assert await settled(handler, 4) == {0: 4}
    assert analyst.done == ["a", "b"]  # type: ignore[attr-defined]
    reasons = {h["dlq.origin.offset"]: (h["dlq.reason"], h["dlq.error"])
               for h in publisher.headers("dead-letter")}
    assert reasons == {b"1": (b"unprocessable", b"ZeroDivisionError: division by zero"),
                       b"2": (b"db_rejected", b"value out of range")}


async def test_a_fault_outside_the_request_stops_the_agent() -> None:
    handler, publisher, _ = handler_with({"a": PermanentError("relation insights is gone")})
    await handler.assigned({0: 0})
    handler.records(0, [Record(0, b"a", request_from("a"))], 0.0)  # type: ignore[list-item]

    with pytest.raises(PermanentError, match="gone"):
        await settled(handler, 1)
    assert publisher.sent == []
