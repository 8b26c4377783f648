"""The brokers a bench can run on (``streams.embedded.start_local_broker`` starts one)."""

from __future__ import annotations

from streams.local_kafka import KAFKA_VERSION

BROKERS = {"tansu": "Tansu (embedded)", "kafka": f"Apache Kafka {KAFKA_VERSION}"}
