"""`streamsight reanalyze` and `streamsight analyze --batch-id` against a real broker,
PostgreSQL, worker processes and a local OpenAI-compatible server: a new analyzer's
insights land beside the old ones, the same analyzer twice adds nothing and costs nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import msgspec
from confluent_kafka import Producer

from streams.commands.reanalyze import request_from_row
from streams.core.analysis import ANALYZER_VERSION
from streams.core.models import insight_id_for
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    ROOT,
    Broker,
    Worker,
    batch_rows,
    produce,
    read_topic,
    wait_for_log,
    worker_env,
)
from tests.support.ai_server import AIServer

MODEL = "gpt-4o-mini"
AI_NAME = f"openai:{MODEL}/v1"
AGENTS = "batcher,analyst,sink-insights"
SINCE = "2000-01-01T00:00:00Z"


def ai_env(broker: Broker, dsn: str, server: AIServer) -> dict[str, str]:
    return worker_env(broker, dsn, OPENAI_API_KEY="sk-test-secret-key",
                      OPENAI_BASE_URL=server.base_url, OPENAI_MODEL=MODEL,
                      OPENAI_TIMEOUT_SECONDS="30")


async def cli(env: dict[str, str], *args: str, stdin: str | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread: the test's loop keeps serving the AI server meanwhile."""
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
            env={**os.environ, **env}, timeout=120, cwd=ROOT, input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    return await asyncio.to_thread(run)


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def insight_rows(dsn: str) -> list[asyncpg.Record]:
    return await fetch(dsn, "SELECT insight_id, batch_id, source, analyzer FROM insights")


async def usage_rows(dsn: str) -> list[asyncpg.Record]:
    return await fetch(dsn, "SELECT batch_id, analyzer, outcome FROM ai_usage")


async def requests_on_topic(broker: Broker) -> int:
    return len(await asyncio.to_thread(read_topic, broker.bootstrap, "analysis-requests",
                                       idle=1.5))


async def wait_for(check: Any, within: float, what: str, worker: Worker) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what}\n{worker.log_text()[-4000:]}"
        await asyncio.sleep(0.5)


def line(output: str, prefix: str) -> str:
    found = [x for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line {prefix!r} in:\n{output}"
    return found[0]


async def test_reanalyze_adds_a_new_analyzers_insights_once(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    dsn = migrated_database
    builtin_env = worker_env(fresh_broker, dsn, BATCH_MAX_AGE_SECONDS="3")
    worker = workers("builtin", builtin_env, AGENTS)
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 600, sources=3, seed=11)

    async def all_analysed() -> bool:
        rows = await batch_rows(dsn)
        return sum(r["event_count"] for r in rows) == 600 and (
            len(await insight_rows(dsn)) == len(rows))

    await wait_for(all_analysed, 120, "not every batch got a built-in insight", worker)
    batches = await batch_rows(dsn)
    before = await insight_rows(dsn)
    assert {r["analyzer"] for r in before} == {ANALYZER_VERSION}
    sources = sorted({r["source"] for r in batches})
    assert len(sources) == 3
    chosen = sources[0]
    selected = [r for r in batches if r["source"] == chosen]
    others = [r for r in batches if r["source"] != chosen]

    # Same analyzer as the workers: nothing to send, nothing added, nothing to pay.
    again = await cli(builtin_env, "reanalyze", "--since", SINCE, "--yes")
    assert again.returncode == 0, again.stderr
    assert line(again.stdout, "batches selected:") == (
        f"batches selected: {len(batches)}, already analysed by {ANALYZER_VERSION}: "
        f"{len(batches)}, to send: 0")
    assert line(again.stdout, "estimated cost:").startswith("estimated cost: $0.00")
    assert "sent 0 analysis requests" in again.stdout
    assert await asyncio.to_thread(worker.stop) == 0
    assert len(await insight_rows(dsn)) == len(before)

    # The analyst restarted with an OpenAI model: a different analyzer name.
    env = ai_env(fresh_broker, dsn, ai_server)
    worker = workers("openai", env, "analyst,sink-insights")
    await wait_for_log(worker, "analyst.ready", within=60)
    published = await requests_on_topic(fresh_broker)
    assert published >= len(batches)

    # No --yes and nothing on stdin: aborted, nothing sent.
    refused = await cli(env, "reanalyze", "--since", SINCE, "--source", chosen)
    assert refused.returncode == 1
    assert "Aborted" in refused.stderr + refused.stdout
    assert line(refused.stdout, "batches selected:").endswith(f"to send: {len(selected)}")
    # Nobody has called this model yet: the estimate comes from the digest sizes.
    estimate = line(refused.stdout, "estimated cost:")
    assert f"for {len(selected)} calls" in estimate and "digest size" in estimate
    assert float(estimate.split("$")[1].split()[0]) > 0
    answered_no = await cli(env, "reanalyze", "--since", SINCE, "--source", chosen,
                            stdin="n\n")
    assert answered_no.returncode == 1
    dry = await cli(env, "reanalyze", "--since", SINCE, "--source", chosen, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing sent" in dry.stdout
    assert await requests_on_topic(fresh_broker) == published
    assert ai_server.chat_requests == []

    sent = await cli(env, "reanalyze", "--since", SINCE, "--source", chosen, "--yes")
    assert sent.returncode == 0, sent.stderr
    assert line(sent.stdout, "sent ") == (
        f"sent {len(selected)} analysis requests to analysis-requests (0 no longer stored), "
        f"skipped 0 already analysed by {AI_NAME}")

    async def new_insights_stored() -> bool:
        rows = await insight_rows(dsn)
        return [r["analyzer"] for r in rows].count(AI_NAME) == len(selected)

    await wait_for(new_insights_stored, 90, "no OpenAI insights for the selection", worker)
    after = await insight_rows(dsn)
    assert len(after) == len(before) + len(selected)
    by_batch: dict[uuid.UUID, set[str]] = {}
    for r in after:
        by_batch.setdefault(r["batch_id"], set()).add(r["analyzer"])
    for b in selected:
        assert by_batch[b["batch_id"]] == {ANALYZER_VERSION, AI_NAME}
    for b in others:
        assert by_batch[b["batch_id"]] == {ANALYZER_VERSION}
    ai_ids = {r["insight_id"] for r in after if r["analyzer"] == AI_NAME}
    assert ai_ids == {uuid.UUID(insight_id_for(str(b["batch_id"]), AI_NAME)) for b in selected}
    assert len(ai_server.chat_requests) == len(selected)

    async def usage_stored() -> bool:
        return len(await usage_rows(dsn)) == len(selected)

    await wait_for(usage_stored, 30, "no ai_usage rows", worker)
    usage = await usage_rows(dsn)
    assert {(r["analyzer"], r["outcome"]) for r in usage} == {(AI_NAME, "ok")}
    assert {r["batch_id"] for r in usage} == {b["batch_id"] for b in selected}

    # Again with the same analyzer: nothing sent, nothing called, counts unchanged; the
    # estimate now comes from the calls just made (120 + 80 tokens each).
    twice = await cli(env, "reanalyze", "--since", SINCE, "--source", chosen, "--yes")
    assert twice.returncode == 0, twice.stderr
    assert line(twice.stdout, "batches selected:") == (
        f"batches selected: {len(selected)}, already analysed by {AI_NAME}: "
        f"{len(selected)}, to send: 0")
    assert "sent 0 analysis requests" in twice.stdout
    plan = await cli(env, "reanalyze", "--since", SINCE, "--dry-run")
    estimate = line(plan.stdout, "estimated cost:")
    assert f"for {len(others)} calls" in estimate
    assert f"average 120 + 80 tokens of {len(selected)} successful" in estimate
    assert f"{120 * len(others)} prompt + {80 * len(others)} completion tokens" in estimate

    # A duplicate request (a redrive, a replay) for an analysed batch: no call, just an ack.
    duplicate = (await fetch(dsn, "SELECT *, digest::text AS digest FROM batches "
                                  "WHERE batch_id = $1", selected[0]["batch_id"]))[0]
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap, "acks": "all"})
    producer.produce("analysis-requests",
                     msgspec.json.encode(request_from_row(duplicate)), chosen.encode())
    assert producer.flush(30) == 0
    await wait_for_log(worker, "analyst.already_analysed", within=60)

    # One batch now, from the "Analyze" button.
    target = others[0]
    batch_id = str(target["batch_id"])
    now = await cli(env, "analyze", "--batch-id", batch_id)
    assert now.returncode == 0, now.stderr
    assert f"sent the analysis request of batch {batch_id}" in now.stdout
    assert "estimated cost:" in now.stdout

    async def one_more() -> bool:
        return len(await insight_rows(dsn)) == len(after) + 1

    await wait_for(one_more, 60, "no insight for the analysed batch", worker)
    done = await cli(env, "analyze", "--batch-id", batch_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"batch {batch_id} already has an insight from {AI_NAME} "
        f"(insight {insight_id_for(batch_id, AI_NAME)}): nothing sent")
    missing = await cli(env, "analyze", "--batch-id", str(uuid.uuid4()))
    assert missing.returncode == 1
    assert missing.stderr.startswith("streamsight: no batch ")

    await asyncio.sleep(3)
    assert len(ai_server.chat_requests) == len(selected) + 1
    assert len(await insight_rows(dsn)) == len(after) + 1
    assert len(await usage_rows(dsn)) == len(selected) + 1
    assert await asyncio.to_thread(worker.stop) == 0
