"""Reusable pytest fixtures for the Huawei Push Kit test peer, independent of conftest.py.

Load them with ``pytest_plugins = ["tests.peers.fixtures_hms"]`` in a test module. The names carry a
``hms_test_`` prefix so they never collide with conftest's shared fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pushsvc.simulators.hms import HmsPeer
from pushsvc.simulators.tls import TestPki, make_test_pki


@pytest.fixture(scope="session")
def hms_test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("hms-pki"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hms_test_peer(hms_test_pki: TestPki) -> AsyncIterator[HmsPeer]:
    async with HmsPeer(hms_test_pki) as peer:
        yield peer
