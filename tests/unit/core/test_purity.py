"""streams/core stays pure: no Kafka, PostgreSQL, HTTP, Faust or clock-reading imports."""

from __future__ import annotations

import ast
from pathlib import Path

import streams.core

FORBIDDEN = {
    "aiokafka", "confluent_kafka", "faust", "mode", "asyncpg", "openai", "httpx", "aiohttp",
    "requests", "socket", "asyncio", "prometheus_client", "structlog", "streams.adapters",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_no_io_library() -> None:
    core = Path(streams.core.__file__).parent
    offenders = {
        f"{path.name}: {name}"
        for path in core.glob("*.py")
        for name in _imports(path)
        if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN)
    }
    assert not offenders


def test_core_never_reads_the_clock() -> None:
    # Time is passed in: time.time() / datetime.now() in the core would make tests wait.
    core = Path(streams.core.__file__).parent
    for path in core.glob("*.py"):
        text = path.read_text()
        assert "time.time(" not in text and ".now(" not in text, path.name
