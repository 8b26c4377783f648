"""The real openai client against a local OpenAI-compatible server that each test scripts."""

from __future__ import annotations

import json
import traceback

import pytest
from openai import AsyncOpenAI

from streams.adapters.openai import (
    ANALYSIS_SCHEMA,
    CallFailed,
    InvalidOutput,
    OpenAIAnalyzer,
)
from streams.core.models import InsightSeverity, UsageOutcome
from streams.core.pricing import cost_usd
from streams.core.prompt import estimate_tokens
from streams.errors import PermanentError, RateLimited, RetryableError
from tests.support.ai_server import VALID_ANALYSIS, AIServer, Reply, closed_port
from tests.support.batches import make_analysis_request

API_KEY = "sk-test-0123456789abcdefSECRET"
MODEL = "gpt-4o-mini"


def analyzer(server: AIServer, timeout: float = 5.0) -> OpenAIAnalyzer:
    return OpenAIAnalyzer(API_KEY, server.base_url, MODEL, timeout=timeout)


async def failure(server: AIServer, *replies: Reply, client_timeout: float = 5.0) -> CallFailed:
    server.script(*replies)
    async with analyzer(server, client_timeout) as ai:
        with pytest.raises(CallFailed) as caught:
            await ai.call(make_analysis_request())
    return caught.value


async def test_success_decodes_the_analysis_and_counts_tokens(ai_server: AIServer) -> None:
    ai_server.script(Reply.ok(prompt_tokens=1500, completion_tokens=300,
                              model="gpt-4o-mini-2024-07-18"))
    request = make_analysis_request()
    async with analyzer(ai_server) as ai:
        result = await ai.call(request)

    assert result.analysis.severity is InsightSeverity.WARNING
    assert result.analysis.anomalies[0].baseline == 0.01
    assert result.analysis.summary == VALID_ANALYSIS["summary"]
    assert (result.prompt_tokens, result.completion_tokens) == (1500, 300)
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert not result.repaired
    assert 0 < result.latency_ms < 5000
    # gpt-4o-mini: $0.15 / $0.60 per 1M tokens, found through the snapshot name.
    assert cost_usd(result.model, 1500, 300) == pytest.approx(0.000405)

    [sent] = ai_server.chat_requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.body["model"] == MODEL
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "batch_analysis", "strict": True, "schema": ANALYSIS_SCHEMA},
    }
    assert [m["role"] for m in sent.messages] == ["system", "user"]
    prompt = sent.prompt_text
    digest = request.digest
    assert digest.latency is not None
    assert f'"error_count":{digest.error_count}' in prompt
    assert f'"p95_ms":{digest.latency.p95_ms}' in prompt
    assert "PaymentTimeout: provider did not answer in 30s" in prompt
    assert "/pay" in prompt
    assert "evt-" not in prompt
    assert request.batch_id not in prompt


async def test_each_call_is_one_request_without_client_retries(ai_server: AIServer) -> None:
    failed = await failure(ai_server, Reply.status(500))
    assert len(ai_server.chat_requests) == 1
    assert isinstance(failed.cause, RetryableError)
    assert not isinstance(failed.cause, RateLimited)
    assert failed.outcome is UsageOutcome.SERVER_ERROR
    assert failed.retryable and failed.retry_after is None
    assert (failed.prompt_tokens, failed.completion_tokens) == (0, 0)
    assert failed.latency_ms > 0


async def test_429_with_retry_after_is_rate_limited(ai_server: AIServer) -> None:
    failed = await failure(ai_server, Reply.status(429, retry_after=2))
    assert isinstance(failed.cause, RateLimited)
    assert failed.cause.retry_after == 2.0
    assert failed.retry_after == 2.0 and failed.retryable
    assert failed.outcome is UsageOutcome.RATE_LIMITED


async def test_429_retry_after_ms_and_without_hint(ai_server: AIServer) -> None:
    failed = await failure(ai_server, Reply.status(429, retry_after_ms=1500))
    assert failed.retry_after == 1.5
    failed = await failure(ai_server, Reply.status(429))
    assert isinstance(failed.cause, RateLimited)
    assert failed.retry_after is None


async def test_503_is_rate_limited_only_with_retry_after(ai_server: AIServer) -> None:
    failed = await failure(ai_server, Reply.status(503, retry_after=30))
    assert isinstance(failed.cause, RateLimited)
    assert failed.retry_after == 30.0
    assert failed.outcome is UsageOutcome.RATE_LIMITED

    failed = await failure(ai_server, Reply.status(503))
    assert type(failed.cause) is RetryableError
    assert failed.outcome is UsageOutcome.SERVER_ERROR


async def test_server_slower_than_the_timeout_is_a_retryable_timeout(
    ai_server: AIServer,
) -> None:
    failed = await failure(ai_server, Reply.slow(3.0), client_timeout=0.3)
    assert type(failed.cause) is RetryableError
    assert failed.outcome is UsageOutcome.TIMEOUT
    assert 250 < failed.latency_ms < 2500

    failed = await failure(ai_server, Reply.hang(), client_timeout=0.3)
    assert failed.outcome is UsageOutcome.TIMEOUT


async def test_slow_but_within_the_timeout_succeeds(ai_server: AIServer) -> None:
    ai_server.script(Reply.slow(0.3))
    async with analyzer(ai_server, timeout=5.0) as ai:
        result = await ai.call(make_analysis_request())
    assert result.latency_ms >= 290


async def test_connection_refused_is_retryable() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    async with OpenAIAnalyzer(API_KEY, base_url, MODEL, timeout=2.0) as ai:
        with pytest.raises(CallFailed) as caught:
            await ai.call(make_analysis_request())
    assert type(caught.value.cause) is RetryableError
    assert caught.value.outcome is UsageOutcome.CONNECTION_ERROR
    assert caught.value.retryable


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
async def test_client_errors_are_permanent(ai_server: AIServer, code: int) -> None:
    failed = await failure(ai_server, Reply.status(code))
    assert isinstance(failed.cause, PermanentError)
    assert failed.outcome is UsageOutcome.CLIENT_ERROR
    assert not failed.retryable
    assert len(ai_server.chat_requests) == 1


async def test_api_key_never_appears_in_errors(ai_server: AIServer) -> None:
    # Some compatible servers echo the key they refused; it must not reach logs or rows.
    echo = f"Incorrect API key provided: {API_KEY}. You can find your API key elsewhere."
    failed = await failure(ai_server, Reply.status(401, message=echo))
    assert isinstance(failed.cause, PermanentError)
    assert "Incorrect API key provided" in str(failed)
    rendered = "".join(traceback.format_exception(failed))
    for text in (str(failed), str(failed.cause), repr(failed), rendered):
        assert API_KEY not in text

    failed = await failure(ai_server, Reply.status(429, message=echo, retry_after=1))
    assert API_KEY not in "".join(traceback.format_exception(failed))


async def test_malformed_json_gets_one_repair_call(ai_server: AIServer) -> None:
    ai_server.script(
        Reply.malformed('{"summary": "cut', prompt_tokens=1000, completion_tokens=5),
        Reply.ok(prompt_tokens=1100, completion_tokens=90),
    )
    async with analyzer(ai_server) as ai:
        result = await ai.call(make_analysis_request())
    assert result.repaired
    assert (result.prompt_tokens, result.completion_tokens) == (2100, 95)
    first, repair = ai_server.chat_requests
    assert repair.messages[:2] == first.messages
    assert repair.messages[2] == {"role": "assistant", "content": '{"summary": "cut'}
    assert repair.messages[3]["role"] == "user"
    assert "invalid" in repair.messages[3]["content"]
    assert repair.body["response_format"] == first.body["response_format"]


async def test_fenced_json_is_accepted_without_repair(ai_server: AIServer) -> None:
    ai_server.script(Reply.ok(f"```json\n{json.dumps(VALID_ANALYSIS)}\n```"))
    async with analyzer(ai_server) as ai:
        result = await ai.call(make_analysis_request())
    assert not result.repaired
    assert len(ai_server.chat_requests) == 1


async def test_schema_violation_twice_is_invalid_output(ai_server: AIServer) -> None:
    failed = await failure(
        ai_server,
        Reply.schema_violation(prompt_tokens=1000, completion_tokens=20),
        Reply.ok({**VALID_ANALYSIS, "confidence": 1.5}, prompt_tokens=1100,
                 completion_tokens=60),
    )
    assert isinstance(failed.cause, InvalidOutput)
    assert isinstance(failed.cause, RetryableError) and failed.retryable
    assert failed.outcome is UsageOutcome.INVALID_OUTPUT
    assert "confidence" in str(failed.cause)
    # Both calls were billed: the usage row must say so.
    assert (failed.prompt_tokens, failed.completion_tokens) == (2100, 80)
    assert failed.model == MODEL
    assert len(ai_server.chat_requests) == 2
    # The repair call quoted what was wrong with the first answer.
    assert "severity" in ai_server.chat_requests[1].messages[-1]["content"] or (
        "confidence" in ai_server.chat_requests[1].messages[-1]["content"])


async def test_repair_call_failing_keeps_the_first_calls_tokens(ai_server: AIServer) -> None:
    failed = await failure(
        ai_server,
        Reply.malformed("not json", prompt_tokens=900, completion_tokens=3),
        Reply.status(429, retry_after=4),
    )
    assert isinstance(failed.cause, RateLimited)
    assert failed.retry_after == 4.0
    assert (failed.prompt_tokens, failed.completion_tokens) == (900, 3)


async def test_json_schema_rejection_falls_back_to_json_mode_for_good(
    ai_server: AIServer,
) -> None:
    ai_server.script(Reply.rejects_json_schema(), Reply.ok(), Reply.ok())
    async with analyzer(ai_server) as ai:
        assert ai.uses_json_schema
        first = await ai.call(make_analysis_request())
        assert not ai.uses_json_schema
        await ai.call(make_analysis_request())
    assert first.analysis.severity is InsightSeverity.WARNING
    formats = [r.body["response_format"]["type"] for r in ai_server.chat_requests]
    assert formats == ["json_schema", "json_object", "json_object"]
    # JSON mode needs the word JSON in the prompt, and the prompt must describe the shape.
    assert "JSON" in ai_server.chat_requests[1].prompt_text
    assert "recommendations" in ai_server.chat_requests[1].prompt_text


async def test_other_400s_do_not_trigger_the_fallback(ai_server: AIServer) -> None:
    failed = await failure(
        ai_server, Reply.status(400, message="'messages' is too long", param="messages")
    )
    assert isinstance(failed.cause, PermanentError)
    assert len(ai_server.chat_requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply.body(b"<html>502 Bad Gateway</html>", code=502, content_type="text/html"),
        Reply.body(b"<html>maintenance</html>", content_type="text/html"),
        Reply.body(b'{"id": "chatcmpl-1", "choi'),
        Reply.body(b'{"choices": []}'),
        Reply.body(b'{"choices": [{"message": {"content": 5}}]}'),
    ],
    ids=["502-html", "200-html", "truncated", "no-choices", "content-not-text"],
)
async def test_broken_response_body_is_a_retryable_server_error(
    ai_server: AIServer, reply: Reply
) -> None:
    # A broken server or proxy, not the model: no repair call, just a retryable failure.
    failed = await failure(ai_server, reply)
    assert type(failed.cause) is RetryableError
    assert failed.outcome is UsageOutcome.SERVER_ERROR
    assert len(ai_server.chat_requests) == 1


async def test_server_records_requests_and_lists_models(ai_server: AIServer) -> None:
    async with AsyncOpenAI(api_key=API_KEY, base_url=ai_server.base_url, max_retries=0) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert ai_server.requests[0].path == "/v1/models"
    assert ai_server.pending == 0


async def test_a_given_client_is_used_without_its_own_retries(ai_server: AIServer) -> None:
    ai_server.script(Reply.status(500), Reply.status(500), Reply.status(500))
    async with AsyncOpenAI(api_key=API_KEY, base_url=ai_server.base_url, max_retries=3) as client:
        ai = OpenAIAnalyzer(API_KEY, None, MODEL, client=client)
        with pytest.raises(CallFailed):
            await ai.call(make_analysis_request())
        await ai.aclose()  # not its client to close
        ai_server.script(Reply.ok())
        assert (await client.models.list()).data
    assert len(ai_server.chat_requests) == 1


async def test_token_estimate_covers_prompt_and_answer_cap(ai_server: AIServer) -> None:
    async with OpenAIAnalyzer(API_KEY, ai_server.base_url, MODEL,
                              max_prompt_tokens=2000, max_completion_tokens=700) as ai:
        request = make_analysis_request()
        estimate = ai.token_estimate(request)
        await ai.call(request)
    sent = ai_server.chat_requests[0]
    assert sent.body["max_completion_tokens"] == 700
    assert estimate == estimate_tokens(sent.messages) + 700
    assert estimate <= 2000 + 700
