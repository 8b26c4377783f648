"""streams/core stays pure: no Kafka, PostgreSQL, HTTP, Faust, settings or environment,
and no reading of the clock, in any module of the package (subpackages included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import streams.core

CORE = Path(streams.core.__file__).parent

FORBIDDEN = {
    "aiokafka", "confluent_kafka", "faust", "mode", "asyncpg", "openai", "httpx", "aiohttp",
    "requests", "socket", "asyncio", "prometheus_client", "structlog", "subprocess",
}
#: What the core may import of this project: itself and the exception types.
OWN = ("streams.core", "streams.errors")
#: Calls that read the clock or the environment: both are passed in.
READS = ("time.time(", "time.monotonic(", "time.perf_counter(", ".now(", ".utcnow(",
         ".today(", "os.environ", "os.getenv(", "getenv(")


def _modules() -> Iterator[Path]:
    return CORE.rglob("*.py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # ``from streams import config`` names the module in the alias.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offends(name: str) -> bool:
    if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN):
        return True
    if name == "streams" or not name.startswith("streams."):
        return False
    return not any(name == own or name.startswith(f"{own}.") for own in OWN)


def test_core_imports_no_io_library_and_nothing_of_ours_outside_it() -> None:
    offenders = {f"{path.relative_to(CORE)}: {name}"
                 for path in _modules() for name in _imports(path) if _offends(name)}
    assert not offenders


def test_the_check_sees_the_ways_in() -> None:
    assert _offends("streams.config") and _offends("streams.adapters.kafka")
    assert _offends("streams.commands.dlq") and _offends("asyncio") and _offends("subprocess")
    assert not _offends("streams.core.models") and not _offends("streams.errors")
    assert not _offends("streams") and not _offends("msgspec")


def test_core_never_reads_the_clock_or_the_environment() -> None:
    # Time and settings are passed in: a core that read them would make tests wait, or
    # depend on the machine they run on.
    for path in _modules():
        text = path.read_text()
        found = [read for read in READS if read in text]
        assert not found, f"{path.relative_to(CORE)}: {found}"
