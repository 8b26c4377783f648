"""Synthetic load: ``streamsight produce`` and the bench send traffic through here."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streams.commands.synthetic import TrafficGenerator
from streams.errors import RetryableError

# Messages generated per step; pacing and progress updates happen once per chunk.
_CHUNK = 500
# A broker that stops answering fails the run instead of hanging it.
_MESSAGE_TIMEOUT_S = 60


@dataclass(frozen=True)
class ProduceReport:
    sent: int
    delivered: int
    failed: int
    invalid: int
    elapsed_s: float
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Deliveries:
    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.unreachable: str | None = None

    def on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self.delivered == 0:
            self.unreachable = err.str()

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err.str()


def produce(
    bootstrap: str,
    topic: str,
    count: int,
    rate: float,
    sources: int,
    invalid_ratio: float,
    seed: int | None,
    progress: bool = True,
) -> ProduceReport:
    """Send ``count`` synthetic events, at most ``rate``/s when ``rate`` > 0, and flush."""
    deliveries = _Deliveries()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
            "message.timeout.ms": _MESSAGE_TIMEOUT_S * 1000,
            # Errors reach us through error_cb; librdkafka's own log would repeat each
            # failed connection attempt on stderr.
            "log_level": 2,
            "error_cb": deliveries.on_error,
        }
    )
    gen = TrafficGenerator(sources=sources, seed=seed, invalid_ratio=invalid_ratio)
    bar = Progress(
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
        TimeElapsedColumn(),
        # stdout is kept for the summary line.
        console=Console(stderr=True),
        disable=not progress,
        transient=True,
    )
    # Slow rates go out in small steps so traffic stays smooth (about 20 steps a second).
    step = _CHUNK if rate <= 0 else max(1, min(_CHUNK, int(rate / 20)))
    start = time.monotonic()
    sent = 0
    try:
        with bar:
            task = bar.add_task("produce", total=count, rate=0.0)
            while sent < count:
                if rate > 0:
                    # Pace against the start, not the previous chunk, so drift never adds up.
                    ahead = start + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                n = min(step, count - sent)
                for key, value in gen.batch(n):
                    _send(producer, topic, key, value, deliveries)
                sent += n
                producer.poll(0)
                _check_reachable(deliveries, bootstrap)
                bar.update(task, completed=sent, rate=sent / max(time.monotonic() - start, 1e-9))
            # Every message resolves within message.timeout.ms; the margin covers the last
            # delivery reports.
            deadline = time.monotonic() + _MESSAGE_TIMEOUT_S + 5
            remaining = producer.flush(0.5)
            while remaining and time.monotonic() < deadline:
                _check_reachable(deliveries, bootstrap)
                remaining = producer.flush(0.5)
    except KafkaException as exc:
        raise RetryableError(f"producing to {topic} failed: {exc.args[0]}") from exc
    elapsed = time.monotonic() - start
    return ProduceReport(
        sent=sent,
        delivered=deliveries.delivered,
        # Messages still queued after the flush timeout were never acknowledged.
        failed=deliveries.failed + remaining,
        invalid=sum(gen.invalid_counts.values()),
        elapsed_s=elapsed,
        first_error=deliveries.first_error
        or (f"{remaining} messages not delivered before timeout" if remaining else None),
    )


def _check_reachable(deliveries: _Deliveries, bootstrap: str) -> None:
    # Nothing ever got through: say so in one line instead of waiting out the timeouts.
    if deliveries.unreachable is not None:
        raise RetryableError(f"cannot reach Kafka at {bootstrap}: {deliveries.unreachable}")


def _send(
    producer: Producer, topic: str, key: bytes | None, value: bytes, on_delivery: _Deliveries
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            # Local queue full: serve delivery reports until there is room.
            producer.poll(0.05)
