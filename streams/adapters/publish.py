"""How the pipeline's handlers write to Kafka: a settle's messages sent at once, then every
acknowledgement awaited (acks=all), so a settle commits only what the broker holds.

A broker failure leaves as ``RetryableError``: the handlers know one error kind for
"try again", whichever client sits underneath.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.errors import RetryableError

Headers = Sequence[tuple[str, bytes]]


class Send(NamedTuple):
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers | None = None


class Publisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    @classmethod
    async def start(cls, bootstrap_servers: str, client_id: str) -> Publisher:
        """A publisher with a producer of its own, connected."""
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            # Each settle sends its whole output at once and waits for it: no lingering.
            linger_ms=0,
            max_batch_size=1024 * 1024,
        )
        await producer.start()
        return cls(producer)

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, messages: Iterable[Send]) -> None:
        """Send ``messages`` and wait until the broker has acknowledged every one."""
        send = self._producer.send
        try:
            pending = [await send(topic, value, key=key, headers=headers)
                       for topic, value, key, headers in messages]
            await asyncio.gather(*pending)
        except KafkaError as exc:
            raise RetryableError(f"publishing to Kafka failed: {exc}") from exc
