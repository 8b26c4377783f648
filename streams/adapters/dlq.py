"""Reading dead-letter whole and sending redriven messages back.

Dead-letter is read from the beginning of every partition up to the end offsets it had
when the read began (exact on every broker: ``Cluster``), by an assigned consumer that
commits nothing (no consumer group to join or leave behind).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streams.adapters.kafka import Cluster, client_conf, kafka_error
from streams.core.dlq import DeadLetter, Outgoing, from_message
from streams.errors import ConfigError, PermanentError, RetryableError

#: Seconds without an answer from the broker after which a read gives up.
_STALL_S = 15.0
_DELIVERY_TIMEOUT_S = 30


def _partitions(client: Any, topic: str) -> int:
    try:
        metadata = client.list_topics(topic, timeout=15)
    except KafkaException as exc:
        raise kafka_error(exc, f"cannot read metadata of {topic}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return 0
    return len(found.partitions)


def read(bootstrap: str, topic: str) -> Iterator[DeadLetter]:
    """Every message of ``topic``, up to the end each partition had when the read began:
    dead-letter may keep growing during an incident, and that must not keep it going.
    Commits nothing."""
    with Cluster(bootstrap, f"streamsight-dlq-{uuid.uuid4().hex[:12]}") as cluster:
        try:
            partitions = cluster.partitions(topic)
        except PermanentError:
            raise ConfigError(f"topic {topic} does not exist (streamsight topics apply)") from None
        bounds = cluster.bounds(topic, partitions)
        pending = {p: end for p, (low, end) in bounds.items() if end > low}
        reader = cluster.reader
        reader.assign([TopicPartition(topic, p, bounds[p][0]) for p in pending])
        answered = time.monotonic()
        while pending:
            messages = reader.consume(1000, 0.2)
            if messages:
                answered = time.monotonic()
            elif time.monotonic() - answered > _STALL_S:
                raise RetryableError(f"reading {topic}: no answer from {bootstrap} for "
                                     f"partition(s) {sorted(pending)} within {_STALL_S:.0f}s")
            for message in messages:
                partition: int = message.partition()  # type: ignore[assignment]
                offset: int = message.offset()  # type: ignore[assignment]
                err = message.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RetryableError(f"reading {topic}: {err.str()}")
                    # Short of its end only when retention removed messages meanwhile.
                    pending.pop(partition, None)
                    continue
                if partition not in pending or offset >= pending[partition]:
                    continue
                if offset + 1 >= pending[partition]:
                    del pending[partition]
                ts_type, ts_ms = message.timestamp()
                yield from_message(partition, offset, ts_ms if ts_type else -1, message.key(),
                                   message.value(), message.headers())


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def send(bootstrap: str, messages: Sequence[Outgoing]) -> SendReport:
    """Produce ``messages`` with acks=all and wait for every delivery report."""
    report = SendReport()

    def on_delivery(where: str) -> Any:
        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                report.sent += 1
            else:
                report.failed += 1
                report.errors.append(f"{where}: {err.str()}")
        return delivered

    producer = Producer({
        **client_conf(bootstrap, "streamsight-dlq"),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": _DELIVERY_TIMEOUT_S * 1000,
        # The workers' producers (aiokafka) place keys as Java clients do.
        "partitioner": "murmur2_random",
    })
    partitions: dict[str, int] = {}
    queued = 0
    for item in messages:
        where = item.source.position
        if item.topic not in partitions:
            partitions[item.topic] = _partitions(producer, item.topic)
        if not partitions[item.topic]:
            report.failed += 1
            report.errors.append(f"{where}: topic {item.topic} does not exist")
            continue
        extra: dict[str, Any] = {}
        if item.partition is not None and 0 <= item.partition < partitions[item.topic]:
            extra["partition"] = item.partition
        try:
            producer.produce(item.topic, item.value, item.key, headers=item.headers,
                             on_delivery=on_delivery(where),
                             **extra)
            queued += 1
        except (KafkaException, BufferError) as exc:
            report.failed += 1
            report.errors.append(f"{where}: {exc}")
        producer.poll(0)
    remaining = producer.flush(_DELIVERY_TIMEOUT_S + 5) if queued else 0
    if remaining:
        report.failed += remaining
        report.errors.append(f"{remaining} messages not acknowledged before the timeout")
    return report
