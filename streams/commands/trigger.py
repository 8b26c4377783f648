"""Manual triggers for running workers: ``streamsight seal``."""

from __future__ import annotations

from confluent_kafka import KafkaException, Message, Producer

from streams.adapters.kafka import client_conf
from streams.core import control
from streams.errors import StreamsightError


def request_seal(bootstrap: str, source: str, topic: str) -> Message:
    """Ask the batcher holding ``source``'s open batch to seal it now.

    The request is a control message on the events topic, keyed by the source, so it
    lands on the partition of the source's events and is handled in order with them.
    Returns the delivered message (its partition and offset)."""
    producer = Producer({**client_conf(bootstrap, "streamsight-trigger"), "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 15_000})
    delivered: list[Message] = []
    failed: list[str] = []

    def on_delivery(err: object, message: Message) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            delivered.append(message)

    try:
        producer.produce(topic, b"", source.encode(), headers=[(control.HEADER, control.SEAL)],
                         on_delivery=on_delivery)
        producer.flush(20)
    except KafkaException as exc:
        raise StreamsightError(f"could not send the seal request: {exc}") from exc
    if failed or not delivered:
        raise StreamsightError(
            f"could not send the seal request: {failed[0] if failed else 'no answer'}")
    return delivered[0]
