"""pytest fixtures for Web Push tests: a test PKI, a VAPID key and a fresh WebPushPeer per test.

Load them with ``pytest_plugins = ["tests.peers.fixtures_webpush"]`` in a test module. The names carry a
``webpush_`` prefix so they never collide with conftest's shared fixtures. The builders they use
(make_vapid_key, make_subscription) live in pushsvc.simulators.webpush, so importing those does not import
this plugin module early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pushsvc.simulators.tls import TestPki, make_test_pki
from pushsvc.simulators.webpush import VapidKey, WebPushPeer, make_vapid_key


@pytest.fixture(scope="session")
def webpush_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("webpush-pki"))


@pytest.fixture(scope="session")
def webpush_vapid_key(tmp_path_factory: pytest.TempPathFactory) -> VapidKey:
    return make_vapid_key(tmp_path_factory.mktemp("webpush-vapid"))


@pytest.fixture
async def webpush_peer(webpush_pki: TestPki) -> AsyncIterator[WebPushPeer]:
    """A fresh push service per test (its own port, subscriptions, counts)."""
    async with WebPushPeer(webpush_pki) as peer:
        yield peer
