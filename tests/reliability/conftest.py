"""Fixtures shared by the reliability tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack
from tests.reliability.faultproxy import ProxiedServer, proxied_nx27017


@pytest.fixture
async def mongo(stack: Stack, tmp_path: Path) -> AsyncIterator[ProxiedServer]:
    """A dedicated nx-27017 behind the fault proxy; the test's own reads and writes bypass the proxy."""
    async with proxied_nx27017(tmp_path / "nx") as server:
        await stack.use_mongo(f"mongodb://{server.direct_address}")
        yield server
