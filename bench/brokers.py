"""The broker a bench runs on: embedded Tansu or Apache Kafka (one KRaft node)."""

from __future__ import annotations

from streams.embedded import start_broker
from streams.local_kafka import KAFKA_VERSION, KafkaCluster

BROKERS = {"tansu": "Tansu (embedded)", "kafka": f"Apache Kafka {KAFKA_VERSION}"}


class Broker:
    """A fresh, running broker of ``kind``; ``stop()`` also removes Kafka's log directory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._server = start_broker() if kind == "tansu" else KafkaCluster(1).start()
        self.bootstrap = self._server.bootstrap

    def stop(self) -> None:
        if isinstance(self._server, KafkaCluster):
            self._server.close()
        else:
            self._server.stop()
