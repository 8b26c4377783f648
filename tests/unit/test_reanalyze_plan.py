"""The pieces of `streamsight reanalyze` that need no services."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from streams import config
from streams.commands.reanalyze import (
    Estimate,
    Target,
    _digest_prompt_tokens,
    request_from_row,
    target,
)
from streams.core.analysis import ANALYZER_VERSION
from streams.core.models import Digest, LatencyStats, SealReason
from streams.core.prompt import MAX_PROMPT_TOKENS


def test_target_follows_the_workers_settings() -> None:
    assert target(config.load(openai_api_key=None)) == Target(ANALYZER_VERSION, None)
    chosen = target(config.load(openai_api_key="sk-x", openai_model="gpt-4.1-mini"))
    assert chosen == Target("openai:gpt-4.1-mini/v1", "gpt-4.1-mini")


def test_digest_estimate_is_capped() -> None:
    assert 0 < _digest_prompt_tokens(100) < _digest_prompt_tokens(4000)
    assert _digest_prompt_tokens(10**7) == MAX_PROMPT_TOKENS


def test_estimate_lines() -> None:
    assert Estimate(0, 0, 0, 0.0, "built-in analyzer: free").line().startswith(
        "estimated cost: $0.00")
    line = Estimate(3, 300, 150, 0.000135, "basis").line()
    assert line == ("estimated cost: $0.000135 for 3 calls, 300 prompt + 150 completion "
                    "tokens (basis)")
    assert "unknown" in Estimate(1, 1, 1, 0.0, "b", priced=False).line()


def test_request_from_a_batches_row() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    digest = Digest(by_type={"http_request": 3}, by_status={"2xx": 3}, by_severity={},
                    error_count=0, top_errors=[("Timeout", 2)],
                    latency=LatencyStats(3, 1.0, 1.0, 2.0, 3.0, 3.0), routes={"/": 3},
                    users=1, samples=[{"event_id": "e1"}])
    row = {"batch_id": "3f2c1a9e-0000-4000-8000-000000000001", "source": "checkout",
           "topic": "events", "partition": 2, "first_offset": 10, "last_offset": 12,
           "event_count": 3, "seal_reason": "age", "opened_at": t, "sealed_at": t,
           "first_event_at": t, "last_event_at": t,
           "digest": msgspec.json.encode(digest).decode()}
    request = request_from_row(row)
    assert request.key == "checkout" and request.partition == 2
    assert request.seal_reason is SealReason.AGE
    assert request.digest == digest and request.event_ids == []
