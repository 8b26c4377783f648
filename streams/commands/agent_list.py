"""``streamsight agents``: every declared agent, with its topic, group and concurrency."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from agents.registry import declared
from streams import config


def rows(settings: config.Settings) -> list[dict[str, Any]]:
    return [{"agent": agent.name, "topic": agent.topic(settings.topics),
             "group": agent.group(settings.app_id), "concurrency": agent.concurrency(settings),
             "service": agent.service}
            for agent in declared().values()]


def render(found: list[dict[str, Any]], console: Console, app_id: str) -> None:
    # The groups all read <APP_ID>-<agent>: said once above the table, which then fits
    # 80 columns.
    table = Table(title=f"agents: consumer group {app_id}-<agent>; worker --agents picks some",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("agent", no_wrap=True)
    table.add_column("topic", no_wrap=True)
    table.add_column("at once", overflow="fold")
    for row in found:
        table.add_row(row["agent"], row["topic"], row["concurrency"])
    console.print(table)
