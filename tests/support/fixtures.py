"""Fixtures over tests.support.

A test module enables them with ``pytest_plugins = ["tests.support.fixtures"]`` (or the
root conftest does, for every test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support.ai_server import AIServer


@pytest_asyncio.fixture
async def ai_server() -> AsyncIterator[AIServer]:
    """A fresh scripted OpenAI-compatible server per test, in the test's event loop."""
    async with AIServer() as server:
        yield server
