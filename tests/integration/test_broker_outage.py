"""A broker stall (SIGSTOP) under a worker and a lag exporter: visible where it matters
(readiness, a gauge, lag no longer exported as if current), quiet in the logs (JSON
only, each kind of failure told once a minute), and no obstacle to a prompt shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from streams.local.kafka import KafkaCluster
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import ROOT, free_port, produce, wait_for, worker_env

AGENTS = "batcher,analyst,sink-insights,sink-errors,sink-performance"


def get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return None, str(exc)


def sample(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def told(path: Path) -> list[dict[str, object]]:
    """The log's lines; each must be a JSON object (librdkafka's included)."""
    out = []
    for line in lines(path):
        assert line.startswith("{"), f"not JSON: {line[:200]}"
        out.append(json.loads(line))
    return out


@pytest.mark.kafka(only=True)
async def test_a_stalled_broker_is_seen_quietly_and_does_not_hold_the_shutdown(
    fresh_broker: KafkaCluster, migrated_database: str, workers: WorkerFactory,
    tmp_path: Path,
) -> None:
    web, exporter_port = free_port(), free_port()
    env = worker_env(fresh_broker, migrated_database, WEB_ENABLED="true", WEB_PORT=str(web),
                     LAG_EXPORTER_PORT=str(exporter_port), LAG_INTERVAL_SECONDS="2")
    worker = workers("outage", env, AGENTS)
    exporter_log = tmp_path / "exporter.log"
    with exporter_log.open("wb") as out:
        exporter = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-m", "streams.cli", "lag-exporter"], cwd=ROOT,
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    ready = f"http://127.0.0.1:{web}/health/ready"
    exported = f"http://127.0.0.1:{exporter_port}/metrics"
    node = fresh_broker.nodes[0]
    try:
        async def answers(url: str, status: int) -> tuple[bool, str]:
            got, body = await asyncio.to_thread(get, url)
            return got == status, f"{got}: {body[:300]}"

        async def lag_exported() -> tuple[bool, str]:
            _, body = await asyncio.to_thread(get, exported)
            return "streamsight_consumer_lag_messages{" in body, body[-300:]

        await wait_for(lambda: answers(ready, 200), 120, "a ready worker", [worker])
        await asyncio.to_thread(produce, fresh_broker.bootstrap, 200)
        await wait_for(lag_exported, 60, "lag from the exporter", [worker])
        before = len(lines(worker.log_dir / "outage-1.log"))

        node.signal(signal.SIGSTOP)
        stalled_at = time.monotonic()
        await wait_for(lambda: answers(ready, 503), 30, "readiness false in the stall", [worker])
        _, body = await asyncio.to_thread(get, ready)
        assert "no broker answered" in json.loads(body)["checks"]["kafka"]["detail"]
        _, metrics = await asyncio.to_thread(get, f"http://127.0.0.1:{web}/metrics")
        assert sample(metrics, "streamsight_kafka_reachable") == 0

        async def lag_withdrawn() -> tuple[bool, str]:
            _, body = await asyncio.to_thread(get, exported)
            failures = sample(body, "streamsight_consumer_lag_read_failures") or 0
            return (failures >= 3 and "streamsight_consumer_lag_messages{" not in body,
                    body[-300:])

        await wait_for(lag_withdrawn, 90, "lag no longer exported as if current", [worker])
        # Long enough for every client to have retried many times over.
        await asyncio.sleep(max(0.0, 40 - (time.monotonic() - stalled_at)))
        node.signal(signal.SIGCONT)
        await wait_for(lambda: answers(ready, 200), 90, "ready again after the stall", [worker])
        await wait_for(lag_exported, 60, "lag exported again", [worker])

        during = told(worker.log_dir / "outage-1.log")[before:]
        messages = [str(line.get("message")) for line in during]
        assert "kafka.unreachable" in messages and "kafka.recovered" in messages
        # A minute's window: each kind of warning or error is told once, with at most one
        # repeat carrying its count, however often every client retried (thousands of
        # lines before).
        failures = Counter(m for line, m in zip(during, messages, strict=True)
                           if line["level"] in ("warning", "error"))
        assert messages.count("kafka.unreachable") <= 2, failures
        assert sum(failures.values()) <= 40, failures
        exporter_said = [str(line.get("message")) for line in told(exporter_log)]
        assert "lag.read_failed" in exporter_said and "lag.read_recovered" in exporter_said
        # One line per kind of failure (refused, timed out, overdue), not one per reading.
        assert exporter_said.count("lag.read_failed") <= 6, exporter_said

        # Stopped while the broker stalls: the worker gives up what it cannot settle
        # (its next owner reads it again) instead of waiting for the broker.
        node.signal(signal.SIGSTOP)
        await wait_for(lambda: answers(ready, 503), 30, "readiness false again", [worker])
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 60)
        assert code == 0, lines(worker.log_dir / "outage-1.log")[-20:]
        exporter.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(exporter.wait, 30) == 0
        told(worker.log_dir / "outage-1.log")
    finally:
        node.signal(signal.SIGCONT)
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait(30)
