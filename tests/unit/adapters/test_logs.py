"""Log set-up: JSON lines with ISO timestamps, stdlib routed through, secrets redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from streams.adapters import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("INFO", "auto", stream=out)  # StringIO is not a TTY: JSON
    yield out
    logs.configure("WARNING", "console")
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_redact_secrets_and_dsn_passwords(stream: io.StringIO) -> None:
    logs.get_logger("t").info(
        "connected to postgresql://app:s3cret@db:5432/x",
        api_key="sk-live",
        openai_api_key="sk-2",
        Authorization="Bearer abc",
        event_key="checkout",
        dsn="postgresql://app:s3cret@db/x",
    )
    (record,) = lines(stream)
    assert record["message"] == "connected to postgresql://app:***@db:5432/x"
    assert record["api_key"] == record["openai_api_key"] == record["Authorization"] == "***"
    assert record["event_key"] == "checkout"
    assert record["dsn"] == "postgresql://app:***@db/x"
    assert record["level"] == "info"
    assert str(record["timestamp"]).endswith("Z")
    assert "s3cret" not in stream.getvalue()


def test_stdlib_loggers_go_through_and_noisy_ones_only_warn(stream: io.StringIO) -> None:
    logging.getLogger("app.part").info("plain %s", "stdlib")
    logging.getLogger("aiokafka.consumer").info("heartbeat")
    logging.getLogger("aiokafka.consumer").warning("rebalance")
    assert [(r["logger"], r["message"]) for r in lines(stream)] == [
        ("app.part", "plain stdlib"),
        ("aiokafka.consumer", "rebalance"),
    ]


def test_reconfigure_replaces_the_handler(stream: io.StringIO) -> None:
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("app").warning("once")
    assert len(lines(stream)) == 1


def test_console_format_is_not_json() -> None:
    out = io.StringIO()
    logs.configure("INFO", "console", stream=out)
    logs.get_logger("c").info("hello", password="pw")
    text = out.getvalue()
    assert "hello" in text
    assert "password=***" in text
    assert not text.startswith("{")
    logs.configure("WARNING", "console")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_failure_is_told_once_a_window_with_the_count_held_back() -> None:
    out, clock = io.StringIO(), Clock()
    logs.configure("INFO", "json", stream=out, clock=clock)
    try:
        rdkafka, ours = logging.getLogger("librdkafka"), logs.get_logger("streams.part")
        # Five clients retrying against two stopped brokers: one kind of failure.
        for second in range(120):
            clock.now = float(second)
            for client in range(5):
                port = 9092 + client % 2
                rdkafka.error("%s [%s] %s", "FAIL", f"it-batcher#consumer-{client}",
                              f"[thrd:127.0.0.1:{port}/1]: 127.0.0.1:{port}/1: Connect to "
                              f"ipv4#127.0.0.1:{port} failed: Connection refused "
                              f"(after {second % 7}ms in state CONNECT)")
            ours.warning("fetch.error", code="_TRANSPORT", attempt=second)
            ours.info("fetch.assigned", partitions=[second])
            if second in (10, 20):  # a state change is not a repeat
                ours.warning("ai.breaker", old="closed" if second == 10 else "open",
                             new="open" if second == 10 else "half_open")
        rdkafka.error("%s [%s] %s", "FAIL", "rdkafka#producer-1", "[thrd:main]: other failure")
    finally:
        logs.configure("WARNING", "console")
    told = lines(out)
    fails = [r for r in told if r["logger"] == "librdkafka" and "Connect" in str(r["message"])]
    assert [r.get("repeated") for r in fails] == [None, 299]
    assert [r.get("repeated") for r in told if r["message"] == "fetch.error"] == [None, 59]
    assert sum(r["message"] == "fetch.assigned" for r in told) == 120
    assert [(r["old"], r["new"]) for r in told if r["message"] == "ai.breaker"] == [
        ("closed", "open"), ("open", "half_open")]
    assert told[-1]["message"].endswith("other failure")
