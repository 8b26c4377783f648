"""Every agent, declared once: its name, the topic it reads and the service that runs it.

The worker runs them (``--agents`` picks some), the lag exporter and ``status`` watch
their consumer groups (``<APP_ID>-<name>``), ``replay`` resolves an agent's name to its
group and topic, and ``streamsight agents`` lists them. An installed package adds agents
of its own through the ``streamsight.agents`` entry point group: each entry point names an
``Agent`` (README, "Write your own agent").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from streams import config
from streams.errors import ConfigError

if TYPE_CHECKING:
    from agents.service import AgentService

ENTRY_POINTS = "streamsight.agents"


@dataclass(frozen=True)
class Agent:
    name: str
    #: A field of ``config.Topics`` (``"events"``: TOPIC_PREFIX applies), or a topic name.
    reads: str
    #: ``"module:Class"`` of its AgentService, imported only when the agent runs.
    service: str
    #: How much it has in hand at once, from the settings, for ``streamsight agents``.
    concurrency: Callable[[config.Settings], str]

    def topic(self, topics: config.Topics) -> str:
        name = getattr(topics, self.reads, None)
        return name if isinstance(name, str) else self.reads

    def group(self, app_id: str) -> str:
        return f"{app_id}-{self.name}"

    def load(self) -> type[AgentService]:
        module, _, attr = self.service.partition(":")
        try:
            found: type[AgentService] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"agent {self.name}: cannot load {self.service}: {exc}") from None
        return found


def _per_fetch(settings: config.Settings) -> str:
    return f"1 fetch of <= {settings.consumer_max_records} messages"


def _analyses(settings: config.Settings) -> str:
    from streams.pipeline.analyst import MAX_WAITING

    return f"{settings.ai_max_concurrency} calls, <= {MAX_WAITING} requests held"


BUILT_IN = (
    Agent("batcher", "events", "agents.batcher:BatcherService", _per_fetch),
    Agent("analyst", "analysis_requests", "agents.analyst:AnalystService", _analyses),
    Agent("sink-insights", "insights", "agents.sinks:InsightSink", _per_fetch),
    Agent("sink-errors", "errors", "agents.sinks:ErrorSink", _per_fetch),
    Agent("sink-performance", "performance", "agents.sinks:PerformanceSink", _per_fetch),
)


def declared() -> dict[str, Agent]:
    """Ours, then those installed packages declare, by name."""
    agents = {agent.name: agent for agent in BUILT_IN}
    for point in entry_points(group=ENTRY_POINTS):
        try:
            agent = point.load()
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises, say which one
            raise ConfigError(f"agent entry point {point.name} ({point.value}): {exc}") from None
        if not isinstance(agent, Agent):
            raise ConfigError(f"agent entry point {point.name} ({point.value}) is not an Agent")
        if agent.name in agents:
            raise ConfigError(f"agent entry point {point.name}: the name {agent.name!r} "
                              "is taken")
        agents[agent.name] = agent
    return agents


def choose(names: list[str] | None) -> list[Agent]:
    """The agents to run (all when None); an unknown name is a configuration error."""
    available = declared()
    chosen = list(available) if names is None else names
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ConfigError(
            f"unknown agent(s) {', '.join(unknown)}; known: {', '.join(sorted(available))}")
    return [available[name] for name in chosen]


def topics_read(topics: config.Topics) -> dict[str, str]:
    """Agent name -> the topic it reads."""
    return {agent.name: agent.topic(topics) for agent in declared().values()}
