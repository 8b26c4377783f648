"""The dead-letter topic for people: ``streamsight dlq list | show | redrive``, rendered
from ``core.dlq`` (what a message says) and ``adapters.dlq`` (reading and sending)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from streams.adapters.dlq import SendReport, read, send
from streams.core.dlq import DeadLetter, Selection, count, iso, ordered, outgoing, preview
from streams.errors import ConfigError, StreamsightError


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def run_list(bootstrap: str, topic: str, selection: Selection, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = count(m for m in read(bootstrap, topic) if selection.matches(m))
    if as_json:
        _print_json(counts.to_json())
        return
    console = Console()
    for title, counter, column in (("by reason", counts.by_reason, "reason"),
                                   ("by origin topic", counts.by_origin, "origin topic")):
        table = Table(title=f"dead-letter {title}", title_justify="left")
        table.add_column(column)
        table.add_column("messages", justify="right")
        for name, n in counter.most_common():
            table.add_row(name, f"{n:,}")
        table.add_section()
        table.add_row("[bold]total[/]", f"[bold]{counts.total:,}[/]")
        console.print(table)


def _print_messages(console: Any, messages: Sequence[DeadLetter], redrive: bool = False) -> None:
    """One block per message: readable at any terminal width, unlike a wide table."""
    from rich.markup import escape

    for m in messages:
        head = f"[bold]{m.position}[/]  [red]{escape(m.reason)}[/]"
        if m.field:
            head += f" ({escape(m.field)})"
        head += f"  dead-lettered {iso(m.timestamp_ms) or '?'}"
        if m.redrive:
            head += f"  redriven {m.redrive}x"
        console.print(head)
        origin = escape(m.origin_topic or "?")
        if m.origin_offset is not None:
            origin += f" {m.origin_partition}:{m.origin_offset}"
        if m.origin_timestamp_ms is not None:
            origin += f" at {iso(m.origin_timestamp_ms)}"
        lines = [("origin", origin), ("key", escape(preview(m.key))),
                 ("value", escape(preview(m.value, 100)))]
        if m.error:
            lines.append(("error", escape(m.error[:300])))
        if m.attempts is not None or m.batch_id:
            lines.append(("batch", f"{m.batch_id or '?'} after {m.attempts or '?'} attempts"))
        if redrive:
            out = outgoing(m)
            lines.append(("send to", "[red]nowhere: no dlq.origin.topic[/]" if out is None else
                          escape(out.topic)
                          + (f" partition {out.partition}" if out.partition is not None else "")
                          + f", dlq.redrive={out.redrive}"))
        for label, text in lines:
            console.print(f"  [dim]{label:<8}[/]{text}", highlight=False, soft_wrap=True)


def _collect(bootstrap: str, topic: str, selection: Selection, limit: int | None,
             ) -> list[DeadLetter]:
    return ordered((m for m in read(bootstrap, topic) if selection.matches(m)), limit)


def run_show(bootstrap: str, topic: str, selection: Selection, limit: int | None, as_json: bool,
             ) -> None:
    from rich.console import Console

    messages = _collect(bootstrap, topic, selection, limit)
    if as_json:
        _print_json([m.to_json() for m in messages])
        return
    console = Console()
    _print_messages(console, messages)
    console.print(f"{len(messages)} message(s)")


def run_redrive(bootstrap: str, topic: str, selection: Selection, limit: int | None, execute: bool,
                as_json: bool, every: bool = False) -> None:
    from rich.console import Console

    if selection.everything and not every:
        raise ConfigError("say which messages to redrive: --reason, --origin-topic, --since, "
                          "--until, --redriven or --offset (or --all for every one)")
    messages = _collect(bootstrap, topic, selection, limit)
    missing = sorted(selection.positions - {(m.partition, m.offset) for m in messages})
    plan = [(m, outgoing(m)) for m in messages]
    sendable = [out for _, out in plan if out is not None]
    unsendable = [m.position for m, out in plan if out is None]
    report = SendReport()
    if execute:
        if sendable:
            report = send(bootstrap, sendable)
        report.failed += len(unsendable)
        report.errors += [f"{p}: no dlq.origin.topic header" for p in unsendable]

    summary = {"matched": len(messages), "sent": report.sent, "failed": report.failed,
               "dry_run": not execute, "would_send": len(sendable),
               "not_found": [f"{p}:{o}" for p, o in missing], "errors": report.errors}
    if as_json:
        _print_json({**summary, "messages": [
            {**m.to_json(), "send_to": None if out is None else
             {"topic": out.topic, "partition": out.partition, "redrive": out.redrive}}
            for m, out in plan]})
    else:
        console = Console()
        _print_messages(console, messages, redrive=True)
        for error in report.errors:
            console.print(f"[red]failed[/] {error}")
        for p, o in missing:
            console.print(f"[yellow]not on dead-letter:[/] {p}:{o}")
        if execute:
            console.print(f"redrive: {len(messages)} matched, {report.sent} sent, "
                          f"{report.failed} failed")
        else:
            console.print(f"dry run: {len(messages)} matched, {len(sendable)} would be sent, "
                          f"{len(unsendable)} cannot be (no origin topic); nothing sent. "
                          "Add --execute to send them.")
    if report.failed:
        raise StreamsightError(f"redrive: {report.failed} of {len(messages)} not sent")
