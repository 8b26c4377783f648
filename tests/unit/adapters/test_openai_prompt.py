"""The prompt (digest only, under a token budget), the answer schema and the price table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streams.adapters.openai import (
    ANALYSIS_SCHEMA,
    load_prices,
    retry_after_seconds,
    validate_analysis,
)
from streams.core.models import Analysis, AnalysisRequest, Digest, LatencyStats
from streams.core.pricing import PRICES, cost_usd
from streams.core.prompt import analyzer_name, build_prompt, estimate_tokens
from streams.errors import ConfigError
from tests.support.ai_server import SCHEMA_VIOLATION, VALID_ANALYSIS
from tests.support.batches import make_analysis_request


def payload(messages: list[dict[str, str]]) -> dict[str, Any]:
    system, user = messages
    assert (system["role"], user["role"]) == ("system", "user")
    data: dict[str, Any] = json.loads(user["content"])
    return data


def with_digest(request: AnalysisRequest, **changes: Any) -> AnalysisRequest:
    return msgspec.structs.replace(
        request, digest=msgspec.structs.replace(request.digest, **changes)
    )


def test_prompt_is_built_from_the_digest_without_event_ids() -> None:
    request = make_analysis_request()
    messages = build_prompt(request)
    data = payload(messages)
    digest = request.digest
    assert data["event_count"] == request.event_count == 101
    assert data["error_count"] == digest.error_count
    assert data["latency_ms"] == msgspec.to_builtins(digest.latency)
    assert data["by_status"] == digest.by_status
    assert data["top_errors"] == [list(pair) for pair in digest.top_errors]
    assert data["samples"] and all("event_id" not in s for s in data["samples"])
    assert "omitted" not in data
    text = json.dumps(messages)
    assert not any(event_id in text for event_id in request.event_ids)
    assert request.batch_id not in text


def test_prompt_orders_counts_most_frequent_first() -> None:
    request = with_digest(make_analysis_request(), routes={"/b": 1, "/a": 9, "/c": 1})
    assert list(payload(build_prompt(request))["routes"]) == ["/a", "/b", "/c"]


def big_request() -> AnalysisRequest:
    # Far more than a batch of 100 can produce, so that every section must give way.
    return with_digest(
        make_analysis_request(),
        routes={f"/route/{i}": 1000 - i for i in range(400)},
        by_type={f"type-{i}": 500 - i for i in range(200)},
        top_errors=[(f"Error{i}: " + "x" * 200, 50 - i) for i in range(40)],
        samples=[{"event_id": f"e{i}", "error": "y" * 250} for i in range(20)],
    )


def test_trimming_drops_samples_first_then_routes() -> None:
    request = big_request()
    full = estimate_tokens(build_prompt(request, max_prompt_tokens=10**9))
    budget = full - 600  # the samples alone weigh more than that
    data = payload(build_prompt(request, max_prompt_tokens=budget))
    assert data["omitted"] == {"samples": data["omitted"]["samples"]}
    assert len(data["samples"]) == 20 - data["omitted"]["samples"]
    assert len(data["routes"]) == 400

    half_routes = with_digest(
        request, samples=[], routes=dict(list(request.digest.routes.items())[:200])
    )
    budget = estimate_tokens(build_prompt(half_routes, max_prompt_tokens=10**9))
    messages = build_prompt(request, max_prompt_tokens=budget)
    data = payload(messages)
    assert estimate_tokens(messages) <= budget
    assert data["samples"] == []
    assert data["omitted"]["samples"] == 20
    # The most frequent routes stay; the tail goes (a few more for the "omitted" note).
    assert 190 <= len(data["routes"]) < 200
    assert list(data["routes"]) == [f"/route/{i}" for i in range(len(data["routes"]))]
    assert "top_errors" not in data["omitted"]


@pytest.mark.parametrize("budget", [3000, 1500, 800, 400])
def test_trimmed_prompt_fits_the_budget_and_keeps_the_headline(budget: int) -> None:
    request = big_request()
    messages = build_prompt(request, max_prompt_tokens=budget)
    assert estimate_tokens(messages) <= budget
    data = payload(messages)
    assert data["error_count"] == request.digest.error_count
    assert data["latency_ms"] is not None
    assert data["event_count"] == request.event_count


def test_a_budget_below_the_headline_sends_the_smallest_prompt() -> None:
    messages = build_prompt(big_request(), max_prompt_tokens=10)
    data = payload(messages)
    for section in ("samples", "routes", "by_type", "top_errors", "by_severity", "by_status"):
        assert not data[section]
    assert data["error_count"] > 0


def test_long_strings_are_clipped() -> None:
    request = with_digest(
        make_analysis_request(),
        top_errors=[("Boom: " + "z" * 10_000, 3)],
        samples=[{"event_id": "e1", "error": "q" * 10_000}],
    )
    data = payload(build_prompt(request, max_prompt_tokens=10**6))
    assert len(data["top_errors"][0][0]) == 300
    assert len(data["samples"][0]["error"]) == 300


def test_empty_digest_makes_a_valid_prompt() -> None:
    request = with_digest(
        make_analysis_request(),
        by_type={}, by_status={}, by_severity={}, error_count=0, top_errors=[],
        latency=None, routes={}, users=0, samples=[],
    )
    data = payload(build_prompt(request))
    assert data["latency_ms"] is None and data["routes"] == {}


def test_system_prompt_names_json_and_every_field() -> None:
    system = build_prompt(make_analysis_request())[0]["content"]
    assert "JSON" in system
    for name in ANALYSIS_SCHEMA["properties"]:
        assert name in system


def test_schema_is_strict_and_matches_the_analysis_struct() -> None:
    def check(schema: dict[str, Any]) -> None:
        assert schema["additionalProperties"] is False
        assert sorted(schema["required"]) == sorted(schema["properties"])

    check(ANALYSIS_SCHEMA)
    check(ANALYSIS_SCHEMA["properties"]["anomalies"]["items"])
    assert set(ANALYSIS_SCHEMA["properties"]) == set(Analysis.__struct_fields__)
    assert ANALYSIS_SCHEMA["properties"]["severity"]["enum"] == ["info", "warning", "critical"]


def test_validate_analysis() -> None:
    assert validate_analysis(json.dumps(VALID_ANALYSIS)).confidence == 0.8
    fenced = f"```json\n{json.dumps(VALID_ANALYSIS)}\n```"
    assert validate_analysis(fenced).summary == VALID_ANALYSIS["summary"]
    bad: list[str | None] = [
        None,
        "  ",
        '{"summary": "cut',
        json.dumps(SCHEMA_VIOLATION),
        json.dumps({**VALID_ANALYSIS, "confidence": -0.1}),
        json.dumps({**VALID_ANALYSIS, "confidence": "0.9"}),
        json.dumps({**VALID_ANALYSIS, "summary": " "}),
        json.dumps({**VALID_ANALYSIS, "anomalies": [{"metric": "x"}]}),
    ]
    for content in bad:
        with pytest.raises(ValueError):
            validate_analysis(content)


def test_cost_table() -> None:
    assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert cost_usd("gpt-4o", 1000, 500) == pytest.approx(0.0075)
    assert cost_usd("gpt-4.1-mini-2025-04-14", 1_000_000, 1_000_000) == pytest.approx(2.0)
    # A snapshot suffix is stripped, a different model is not matched by prefix.
    assert cost_usd("gpt-4o-mini-2024-07-18", 0, 1_000_000) == pytest.approx(0.60)
    assert cost_usd("llama3.1:8b", 1000, 1000) == 0.0
    assert cost_usd("my-model", 2_000_000, 0, prices={"my-model": (1.0, 2.0)}) == 2.0
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1"):
        assert model in PRICES


def test_load_prices_merges_overrides(tmp_path: Path) -> None:
    assert load_prices(None) == PRICES
    assert load_prices("") == PRICES
    inline = load_prices('{"llama3.1:8b": [0, 0], "gpt-4o": {"prompt": 2, "completion": 8}}')
    assert inline["llama3.1:8b"] == (0.0, 0.0)
    assert inline["gpt-4o"] == (2.0, 8.0)
    assert inline["gpt-4o-mini"] == PRICES["gpt-4o-mini"]
    path = tmp_path / "prices.json"
    path.write_text('{"mistral-small": [0.1, 0.3]}')
    assert load_prices(str(path))["mistral-small"] == (0.1, 0.3)
    assert PRICES.get("mistral-small") is None


@pytest.mark.parametrize(
    "bad",
    ["{not json", "[1, 2]", '{"m": [1]}', '{"m": [-1, 2]}', '{"m": {"prompt": 1}}',
     '{"m": [true, 1]}', "/nonexistent/prices.json"],
)
def test_load_prices_rejects_bad_input_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_prices(bad)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("price table")


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_analyzer_name_carries_model_and_prompt_version() -> None:
    assert analyzer_name("gpt-4o-mini") == "openai:gpt-4o-mini/v1"


def test_digest_type_is_what_the_prompt_reads() -> None:
    # Guard: a new Digest field must be considered for the prompt, not silently dropped.
    assert set(Digest.__struct_fields__) == {
        "by_type", "by_status", "by_severity", "error_count", "top_errors", "latency",
        "routes", "users", "samples",
    }
    assert set(LatencyStats.__struct_fields__) >= {"p95_ms", "p99_ms"}
