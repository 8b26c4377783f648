"""Build the Faust app from settings: one app, every agent, one worker process."""

from __future__ import annotations

from collections.abc import Iterable

import faust

from agents import lag, web
from agents.service import AgentService
from agents.supervisor import AgentSupervisor
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
    session_ms = settings.consumer_session_timeout_ms
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        web_port=settings.web_port,
        web_enabled=settings.web_enabled,
        topic_replication_factor=1,
        topic_allow_declare=False,
        broker_session_timeout=session_ms / 1000,
        broker_heartbeat_interval=settings.consumer_heartbeat_interval_ms / 1000,
        producer_acks=-1,
    )
    for name in chosen:
        agent = available[name]
        app.add_dependency(AgentSupervisor(
            name, lambda agent=agent, **kwargs: agent(settings, **kwargs),
            loop=app.loop, beacon=app.beacon))
    lag.install(app, settings)
    web.install(app)
    return app
