"""The brokers a bench can run on (``streams.local.embedded.start_local_broker`` starts one)."""

from __future__ import annotations

from streams.local.kafka import KAFKA_VERSION

BROKERS = {"tansu": "Tansu (embedded)", "kafka": f"Apache Kafka {KAFKA_VERSION}"}
