"""The analyst against a real broker, PostgreSQL, worker processes and a local
OpenAI-compatible server driven by the real ``openai`` client (guarantee 4)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import orjson

from streams.core.analysis import ANALYZER_VERSION
from streams.core.models import insight_id_for
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    Worker,
    batch_rows,
    events_batched,
    free_port,
    produce,
    read_topic,
    wait_for_log,
    worker_env,
)
from tests.support.ai_server import AIServer, Reply

MODEL = "gpt-4o-mini"
AI_NAME = f"openai:{MODEL}/v1"
BOTH = "batcher,analyst"


def ai_env(broker: Broker, dsn: str, server: AIServer, **extra: str) -> dict[str, str]:
    return worker_env(broker, dsn, OPENAI_API_KEY="sk-test-secret-key",
                      OPENAI_BASE_URL=server.base_url, OPENAI_MODEL=MODEL,
                      OPENAI_TIMEOUT_SECONDS="30", **extra)


async def topic(broker: Broker, name: str) -> list[tuple[Any, Any, dict[str, bytes]]]:
    return await asyncio.to_thread(read_topic, broker.bootstrap, name, idle=2.0)


async def ai_failures(broker: Broker) -> list[dict[str, Any]]:
    """The analyst's records on `errors` (the batcher's event error records left out)."""
    return [record for _key, value, _headers in await topic(broker, "errors")
            for record in orjson.loads(value) if record["type"] == "ai_failed"]


async def insights(broker: Broker) -> dict[str, dict[str, Any]]:
    """Insights by id; an id published twice must carry the same analysis."""
    found: dict[str, dict[str, Any]] = {}
    for _key, value, _headers in await topic(broker, "insights"):
        insight = orjson.loads(value)
        earlier = found.setdefault(insight["insight_id"], insight)
        assert earlier["analysis"] == insight["analysis"]
    return found


async def wait_for(check: Any, within: float, what: str, worker: Worker) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what}\n{worker.log_text()[-4000:]}"
        await asyncio.sleep(0.5)


async def one_batch(broker: Broker) -> None:
    """100 events of one source: exactly one batch, sealed by count."""
    await asyncio.to_thread(produce, broker.bootstrap, 100, sources=1, seed=5)


async def test_builtin_analyzer_writes_one_insight_per_batch(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    worker = workers("builtin", worker_env(fresh_broker, migrated_database,
                                           BATCH_MAX_AGE_SECONDS="3"), BOTH)
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 1200, sources=5, seed=6)

    async def all_analysed() -> bool:
        rows = await batch_rows(migrated_database)
        return sum(r["event_count"] for r in rows) == 1200 and (
            len(await insights(fresh_broker)) == len(rows))

    await wait_for(all_analysed, 90, "not every batch got an insight", worker)
    assert await asyncio.to_thread(worker.stop) == 0
    rows = await batch_rows(migrated_database)
    found = await insights(fresh_broker)
    assert set(found) == {insight_id_for(str(r["batch_id"]), ANALYZER_VERSION) for r in rows}
    for insight in found.values():
        assert insight["analyzer"] == ANALYZER_VERSION
        analysis = insight["analysis"]
        assert analysis["summary"] and analysis["severity"] in {"info", "warning", "critical"}
        assert 0 <= analysis["confidence"] <= 1
        assert insight["usage"] == [] and insight["cost_usd"] == 0


async def test_openai_retries_honour_retry_after_and_record_each_call(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.script(Reply.status(429, retry_after=2), Reply.status(500),
                     Reply.ok(prompt_tokens=800, completion_tokens=200))
    worker = workers("retry", ai_env(fresh_broker, migrated_database, ai_server), BOTH)
    await one_batch(fresh_broker)

    async def answered() -> bool:
        return len(await insights(fresh_broker)) == 1

    await wait_for(answered, 90, "no insight", worker)
    assert await asyncio.to_thread(worker.stop) == 0
    [insight] = (await insights(fresh_broker)).values()
    [row] = await batch_rows(migrated_database)
    assert insight["insight_id"] == insight_id_for(str(row["batch_id"]), AI_NAME)
    assert [u["outcome"] for u in insight["usage"]] == ["rate_limited", "server_error", "ok"]
    assert [u["attempt"] for u in insight["usage"]] == [1, 2, 3]
    assert (insight["prompt_tokens"], insight["completion_tokens"]) == (800, 200)
    assert insight["cost_usd"] > 0
    calls = ai_server.chat_requests
    assert len(calls) == 3
    assert calls[1].at - calls[0].at >= 2.0, "Retry-After was not honoured"
    # The prompt is built from the digest: numbers, never the raw events' ids.
    assert insight["batch_id"] not in calls[0].prompt_text
    assert "sk-test-secret-key" not in worker.log_text()
    [row] = await batch_rows(migrated_database)
    assert row["status"] == "ANALYZED"


async def test_failed_requests_go_to_dead_letter_with_attempts_and_an_error_record(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.default = Reply.status(500)
    worker = workers("dead", ai_env(fresh_broker, migrated_database, ai_server,
                                    AI_MAX_ATTEMPTS="3"), BOTH)
    await one_batch(fresh_broker)

    async def dead_lettered() -> bool:
        return any(h.get("dlq.reason") == b"ai_failed"
                   for _, _, h in await topic(fresh_broker, "dead-letter"))

    await wait_for(dead_lettered, 90, "nothing dead-lettered", worker)
    assert await asyncio.to_thread(worker.stop) == 0
    assert len(ai_server.chat_requests) == 3
    [(_, value, headers)] = [m for m in await topic(fresh_broker, "dead-letter")
                             if m[2].get("dlq.reason") == b"ai_failed"]
    [row] = await batch_rows(migrated_database)
    assert headers["dlq.attempts"] == b"3"
    assert headers["dlq.batch_id"].decode() == str(row["batch_id"])
    assert orjson.loads(value)["batch_id"] == str(row["batch_id"])
    [record] = await ai_failures(fresh_broker)
    assert record["batch_id"] == str(row["batch_id"])
    assert [u["outcome"] for u in record["usage"]] == ["server_error"] * 3
    assert await insights(fresh_broker) == {}
    [row] = await batch_rows(migrated_database)
    assert row["status"] == "DEAD"


async def test_client_errors_fail_at_once(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.default = Reply.status(400, message="model does not exist")
    worker = workers("permanent", ai_env(fresh_broker, migrated_database, ai_server), BOTH)
    await one_batch(fresh_broker)

    async def dead_lettered() -> bool:
        return len(await ai_failures(fresh_broker)) == 1

    await wait_for(dead_lettered, 90, "no error record", worker)
    assert await asyncio.to_thread(worker.stop) == 0
    assert len(ai_server.chat_requests) == 1
    [row] = await batch_rows(migrated_database)
    assert row["status"] == "FAILED"


async def test_daily_budget_spent_makes_requests_wait(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    worker = workers("spend", ai_env(fresh_broker, migrated_database, ai_server,
                                     AI_BUDGET_USD_PER_DAY="0.0000001"), BOTH)
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 200, sources=1, seed=5)
    await wait_for_log(worker, "ai.daily_budget_spent", within=90)
    await asyncio.sleep(3)
    assert await asyncio.to_thread(worker.stop) == 0
    # The first call spent the day's budget; the second request waits instead of calling.
    assert len(ai_server.chat_requests) == 1
    assert len(await insights(fresh_broker)) == 1


async def test_breaker_opens_requests_wait_then_one_probe_closes_it(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    cooldown = 5.0
    port = free_port()
    ai_server.script(Reply.status(500), Reply.status(500))
    worker = workers("breaker", ai_env(
        fresh_broker, migrated_database, ai_server, CIRCUIT_FAILURE_THRESHOLD="2",
        CIRCUIT_COOLDOWN_SECONDS=str(cooldown), AI_MAX_ATTEMPTS="5",
        WEB_ENABLED="true", WEB_PORT=str(port)), BOTH)
    await one_batch(fresh_broker)

    async def answered() -> bool:
        return len(await insights(fresh_broker)) == 1

    await wait_for(answered, 90, "no insight", worker)
    scraped = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    health = orjson.loads(await asyncio.to_thread(
        scrape, f"http://127.0.0.1:{port}/health/detailed", "application/json"))
    assert await asyncio.to_thread(worker.stop) == 0
    # The breaker's state and every call are exposed to Prometheus.
    assert "streamsight_ai_breaker_state 0.0" in scraped
    calls_by = 'streamsight_ai_requests_total{model="gpt-4o-mini",outcome="%s"} %s'
    assert calls_by % ("server_error", "2.0") in scraped
    assert calls_by % ("ok", "1.0") in scraped
    assert health["components"]["ai"] == {
        "analyzer": AI_NAME, "breaker": "closed", "consecutive_failures": 0}
    calls = ai_server.chat_requests
    assert len(calls) == 3
    # Open for the whole cooldown: the request waited, it did not burn attempts.
    assert calls[2].at - calls[1].at >= cooldown - 0.1
    [insight] = (await insights(fresh_broker)).values()
    assert [u["attempt"] for u in insight["usage"]] == [1, 2, 3]
    log = worker.log_text()
    transitions = [(line["old"], line["new"]) for line in map(_json, log.splitlines())
                   if line.get("message") == "ai.breaker"]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_two_workers_share_one_request_budget(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    per_minute = 60
    env = ai_env(fresh_broker, migrated_database, ai_server, BATCH_MAX_EVENTS="10",
                 AI_REQUESTS_PER_MINUTE=str(per_minute), AI_TOKENS_PER_MINUTE="10000000",
                 AI_MAX_CONCURRENCY="8")
    first = workers("budget-a", env, BOTH)
    second = workers("budget-b", env, BOTH)
    await wait_for_log(first, "fetch.assigned", 2)
    await wait_for_log(second, "fetch.assigned", 2)
    # 600 events in batches of 10 over 20 sources: 60 requests, far more than the budget
    # lets through in the window below.
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 600, sources=20, seed=8)
    # Twenty calls take the budget about twenty seconds: long enough to show the rate.
    deadline = time.monotonic() + 120
    while len(ai_server.chat_requests) < 20:
        assert time.monotonic() < deadline, len(ai_server.chat_requests)
        await asyncio.sleep(0.2)
    await asyncio.gather(asyncio.to_thread(first.stop), asyncio.to_thread(second.stop))
    times = sorted(call.at for call in ai_server.chat_requests)
    assert len(times) >= 10
    window = times[-1] - times[0]
    # The bucket holds one second of burst: at most 1 + rate x window calls.
    allowed = (1 + per_minute / 60 * window) * 1.1
    assert len(times) <= allowed, f"{len(times)} calls in {window:.1f}s"
    assert first.log_text().count("ai.call") > 0 and second.log_text().count("ai.call") > 0


async def test_slow_provider_does_not_hold_up_batching(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.default = Reply.slow(20)
    worker = workers("slow", ai_env(fresh_broker, migrated_database, ai_server,
                                    BATCH_MAX_AGE_SECONDS="2"), BOTH)
    await wait_for_log(worker, "fetch.assigned", 2)
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 2000, sources=20,
                                      rate=400, seed=9)
    sent = time.monotonic()

    async def batched() -> bool:
        return await events_batched(migrated_database) == len(traffic.valid)

    await wait_for(batched, 10, "the batcher fell behind while the AI was slow", worker)
    assert time.monotonic() - sent < 10
    assert ai_server.chat_requests, "no AI call was in flight"
    assert await insights(fresh_broker) == {}, "the provider was meant to be still thinking"
    await asyncio.to_thread(worker.stop)




def scrape(url: str, content_type: str = "text/plain") -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(content_type)
        return str(response.read().decode())


def _json(line: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def test_calls_in_flight_at_a_crash_are_redone_and_stay_single(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.default = Reply.slow(30)
    worker = workers("crash", ai_env(fresh_broker, migrated_database, ai_server,
                                     BATCH_MAX_AGE_SECONDS="3"), BOTH)
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 300, sources=3, seed=10)

    async def three_in_flight() -> bool:
        # Received by the server (a logged ai.call may not have reached it yet).
        return len(ai_server.chat_requests) >= 3

    await wait_for(three_in_flight, 60, "three calls in flight", worker)
    worker.kill()
    ai_server.default = Reply.ok()
    worker.start()
    rows: list[Any] = []

    async def all_answered() -> bool:
        rows[:] = await batch_rows(migrated_database)
        return sum(r["event_count"] for r in rows) == 300 and (
            len(await insights(fresh_broker)) == len(rows))

    await wait_for(all_answered, 90, "the killed worker's calls were not redone", worker)
    assert await asyncio.to_thread(worker.stop) == 0
    assert set(await insights(fresh_broker)) == {
        insight_id_for(str(r["batch_id"]), AI_NAME) for r in rows}
    # Three calls were lost with the killed worker and made again after the restart.
    assert len(ai_server.chat_requests) >= len(rows) + 3
