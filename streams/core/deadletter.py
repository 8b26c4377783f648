"""What a dead-letter message says about where it came from and why it was refused."""

from __future__ import annotations

from streams.core.models import Rejection

MAX_ERROR_BYTES = 1024


def headers(
    rejection: Rejection, topic: str, partition: int, offset: int, timestamp_ms: int
) -> list[tuple[str, bytes]]:
    """Kafka headers for a refused message; its key and value travel unchanged."""
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
    return out
