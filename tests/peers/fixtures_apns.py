"""pytest fixtures for APNs tests: test PKI, a p8 signing key, a client certificate, a fresh ApnsPeer.

Register them with ``pytest_plugins = ("tests.peers.fixtures_apns",)`` (root conftest or test module).
The builders they use (make_signing_key, make_client_cert, apns_token_settings, ...) live in
pushsvc.simulators.apns, so importing those does not import this plugin module early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pushsvc.providers.apns import ApnsProvider
from pushsvc.simulators.apns import (
    ApnsClientCert,
    ApnsPeer,
    ApnsSigningKey,
    apns_token_settings,
    make_client_cert,
    make_signing_key,
)
from pushsvc.simulators.tls import TestPki, make_test_pki


@pytest.fixture(scope="session")
def apns_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("apns-pki"))


@pytest.fixture(scope="session")
def apns_signing_key(tmp_path_factory: pytest.TempPathFactory) -> ApnsSigningKey:
    return make_signing_key(tmp_path_factory.mktemp("apns-key"))


@pytest.fixture(scope="session")
def apns_client_cert(tmp_path_factory: pytest.TempPathFactory) -> ApnsClientCert:
    return make_client_cert(tmp_path_factory.mktemp("apns-cert"))


@pytest.fixture
async def apns_fresh_peer(apns_pki: TestPki, apns_signing_key: ApnsSigningKey) -> AsyncIterator[ApnsPeer]:
    """A peer per test requiring JWTs signed by apns_signing_key (signature, kid and iss checked)."""
    peer = ApnsPeer(
        apns_pki,
        auth="token",
        jwt_public_key=apns_signing_key.public_pem,
        key_id=apns_signing_key.key_id,
        team_id=apns_signing_key.team_id,
    )
    async with peer:
        yield peer


@pytest.fixture
async def apns_demo_provider(
    apns_fresh_peer: ApnsPeer, apns_pki: TestPki, apns_signing_key: ApnsSigningKey
) -> AsyncIterator[ApnsProvider]:
    """App "demo"'s token-auth APNs provider aimed at apns_fresh_peer (a 30 s send timeout), started."""
    provider = ApnsProvider("demo", apns_token_settings(apns_fresh_peer, apns_pki, apns_signing_key), 30.0)
    await provider.start()
    yield provider
    await provider.close()
