"""Build the Faust app from settings: one app, every agent, one worker process."""

from __future__ import annotations

from collections.abc import Iterable

import faust
from faust.app.base import BootStrategy

from agents import broker, lag, web
from agents.service import AgentService
from agents.supervisor import Agents, AgentSupervisor
from streams.config import Settings
from streams.errors import ConfigError


def known_agents() -> dict[str, type[AgentService]]:
    from agents import analyst, batcher, sinks

    return {
        "batcher": batcher.BatcherService,
        "analyst": analyst.AnalystService,
        "sink-insights": sinks.InsightSink,
        "sink-errors": sinks.ErrorSink,
        "sink-performance": sinks.PerformanceSink,
    }


def resolve_agents(agents: Iterable[str] | None) -> list[str]:
    """The agents to run (all when None); an unknown name is a configuration error."""
    available = known_agents()
    chosen = list(available) if agents is None else list(agents)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ConfigError(
            f"unknown agent(s) {', '.join(unknown)}; known: {', '.join(sorted(available))}"
        )
    return chosen


def create_app(settings: Settings, agents: Iterable[str] | None = None) -> faust.App:
    available = known_agents()
    chosen = resolve_agents(agents)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        web_port=settings.web_port,
        web_enabled=settings.web_enabled,
        topic_allow_declare=False,
    )
    app.add_dependency(Agents([
        AgentSupervisor(name, lambda agent=available[name], **kwargs: agent(settings, **kwargs),
                        loop=app.loop, beacon=app.beacon)
        for name in chosen], loop=app.loop, beacon=app.beacon))
    broker.install(app, settings)
    # Faust hosts the process: services, signals, the web server. The agents consume and
    # produce through clients of their own, so Faust's Kafka consumer and producer stay
    # off: idle, they still joined a group of their own, and in a broker outage their
    # shutdown hung (aiokafka's fetcher re-raises the cancellation of its retry sleep
    # while closing, and mode then waits for a thread that has died).
    app.boot_strategy = BootStrategy(app, enable_kafka=False)
    lag.install(app, settings)
    web.install(app)
    return app
