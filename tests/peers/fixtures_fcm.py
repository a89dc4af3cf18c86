"""Reusable pytest fixtures for the FCM test peer, independent of conftest.py.

Load them with ``pytest_plugins = ["tests.peers.fixtures_fcm"]`` in a test module. The names carry a
``fcm_test_`` prefix so they never collide with conftest's shared ``pki`` / ``fcm_peer`` fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pushsvc.simulators.fcm import DEFAULT_PROJECT, FcmPeer
from pushsvc.simulators.tls import TestPki, make_test_pki

FCM_PROJECT = DEFAULT_PROJECT


@pytest.fixture(scope="session")
def fcm_test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("fcm-pki"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fcm_test_peer(fcm_test_pki: TestPki) -> AsyncIterator[FcmPeer]:
    async with FcmPeer(fcm_test_pki) as peer:
        yield peer


@pytest.fixture(scope="session")
def fcm_test_service_account(fcm_test_peer: FcmPeer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fcm-sa") / "service-account.json"
    return fcm_test_peer.write_service_account(path, FCM_PROJECT)
