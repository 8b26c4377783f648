"""What a dead-letter message says about where it came from and why it was refused."""

from __future__ import annotations

from streams.core.ingest import Record
from streams.core.models import Rejection

MAX_ERROR_BYTES = 1024
#: How many times ``streamsight dlq redrive`` has sent a message back; it travels with the
#: message so that dead-letter copies of a redriven message keep the count.
REDRIVE_HEADER = "dlq.redrive"


def headers(rejection: Rejection, topic: str, record: Record) -> list[tuple[str, bytes]]:
    """Kafka headers for a refused message read from ``topic``; its key and value travel
    unchanged."""
    partition, offset, timestamp_ms = record.partition(), record.offset(), record.timestamp()[1]
    out = [
        ("dlq.reason", rejection.reason.value.encode()),
        ("dlq.error", rejection.message.encode()[:MAX_ERROR_BYTES]),
        ("dlq.origin.topic", topic.encode()),
        ("dlq.origin.partition", str(partition).encode()),
        ("dlq.origin.offset", str(offset).encode()),
        ("dlq.origin.timestamp", str(timestamp_ms).encode()),
    ]
    if rejection.field is not None:
        out.append(("dlq.field", rejection.field.encode()))
    for name, value in record.headers() or ():
        if name == REDRIVE_HEADER and value is not None:
            out.append((REDRIVE_HEADER, value if isinstance(value, bytes) else value.encode()))
            break
    return out
