"""``streamsight lag-exporter``: consumer lag for Prometheus from a process of its own.

Lag is read from the broker, so this keeps reporting (and lag keeps growing) while no
worker runs; Prometheus alerts on the workers' own metrics cannot see that.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from agents.registry import topics_read
from streams import config
from streams.adapters import logs
from streams.adapters.kafka import ensure_reachable
from streams.adapters.lag import LagCollector, agent_groups
from streams.adapters.lag_process import LagProcess
from streams.adapters.ports import ensure_free


def run(settings: config.Settings) -> None:
    """Serve /metrics on LAG_EXPORTER_PORT until SIGTERM or SIGINT."""
    logs.configure(settings.log_level, settings.log_format)
    log = logs.get_logger(__name__)
    groups = agent_groups(settings.app_id, topics_read(settings.topics))
    collector = LagCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    ensure_free(settings.lag_exporter_port, "LAG_EXPORTER_PORT")
    # A broker that is not there at start is a deployment error, said in one line; one
    # that goes away later is what the exporter reports (lag read failures).
    ensure_reachable(settings.kafka_bootstrap_servers)
    server, thread = start_http_server(settings.lag_exporter_port, registry=registry)
    reader = LagProcess(settings.kafka_bootstrap_servers, groups,
                        client_id=f"{settings.app_id}-lag-exporter")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        reader.cancel()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("lag_exporter.started", port=settings.lag_exporter_port, groups=sorted(groups),
             interval_s=settings.lag_interval_seconds)
    try:
        while not stop.is_set():
            collector.refresh(reader)
            stop.wait(settings.lag_interval_seconds)
    finally:
        server.shutdown()
        thread.join(5)
        reader.close()
        log.info("lag_exporter.stopped")
