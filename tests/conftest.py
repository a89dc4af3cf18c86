"""Session fixtures: the real protocol servers (Tansu, nx-27017, TLS provider peers) and a pushsvc factory.

Nothing is mocked: pushsvc talks to the broker through aiokafka, to the MongoDB wire server through
PyMongo, and to the APNs/FCM peers over TLS + HTTP/2 with certificate verification on.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pushsvc.config import MongoSettings
from pushsvc.dev.servers import ServerProcess, create_topics, nx27017, tansu
from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.hms import DEFAULT_CLIENT_SECRET, HmsPeer
from pushsvc.simulators.tls import TestPki, make_test_pki
from pushsvc.simulators.webpush import VapidKey, WebPushPeer, make_vapid_key
from pushsvc.store.database import Database
from tests.integration.stack import APNS_KEY_ID, APNS_TEAM_ID, Stack
from tests.integration.stores import Stores

_counter = itertools.count()


def unique(prefix: str) -> str:
    """Per-test names for topics, groups and databases, so tests share servers without sharing data."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def pki(work_dir: Path) -> Iterator[TestPki]:
    pki = make_test_pki(work_dir / "pki")
    # firebase-admin's HTTP clients (requests, httpx) read these; the bundle is system CAs + the test CA.
    saved = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    os.environ["SSL_CERT_FILE"] = str(pki.bundle_file)
    os.environ["REQUESTS_CA_BUNDLE"] = str(pki.bundle_file)
    yield pki
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def kafka_server(work_dir: Path) -> Iterator[ServerProcess]:
    server = tansu(work_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_server(work_dir: Path) -> Iterator[ServerProcess]:
    server = nx27017(work_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_server: ServerProcess) -> str:
    return f"127.0.0.1:{kafka_server.port}"


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: ServerProcess) -> str:
    return f"mongodb://127.0.0.1:{mongo_server.port}"


@pytest.fixture
def topics(bootstrap: str) -> Callable[..., object]:
    """Make a fresh set of pushsvc topics for one test: returns the KafkaSettings overrides."""

    async def make(partitions: int = 3) -> dict[str, str]:
        names = {
            "requests_topic": unique("push.requests"),
            "dlq_topic": unique("push.requests.dlq"),
            "outcomes_topic": unique("push.outcomes"),
        }
        await create_topics(bootstrap, {names["requests_topic"]: partitions, names["dlq_topic"]: 1,
                                        names["outcomes_topic"]: 1})
        return {**names, "group_id": unique("pushsvc")}

    return make


@pytest.fixture(scope="session")
async def apns_peer(pki: TestPki) -> AsyncIterator[ApnsPeer]:
    async with ApnsPeer(pki, auth="token", key_id=APNS_KEY_ID, team_id=APNS_TEAM_ID) as peer:
        yield peer


@pytest.fixture(scope="session")
async def fcm_peer(pki: TestPki) -> AsyncIterator[FcmPeer]:
    async with FcmPeer(pki) as peer:
        yield peer


@pytest.fixture
async def stack(
    tmp_path: Path,
    bootstrap: str,
    mongo_uri: str,
    pki: TestPki,
    apns_peer: ApnsPeer,
    fcm_peer: FcmPeer,
    topics: Callable[..., Any],
) -> AsyncIterator[Stack]:
    """A pushsvc wired to the test servers; each test gets its own topics, group and database."""
    apns_peer.reset()
    fcm_peer.reset()
    kafka = await topics()
    service_account = fcm_peer.write_service_account(tmp_path / "fcm-sa.json")
    stack = Stack(tmp_path, bootstrap, mongo_uri, unique("pushsvc"), kafka, pki, apns_peer, fcm_peer, service_account)
    yield stack
    await stack.close()


@pytest.fixture
async def web_peer(pki: TestPki) -> AsyncIterator[WebPushPeer]:
    """A Web Push service per test (its subscriptions and received pushes its own)."""
    async with WebPushPeer(pki) as peer:
        yield peer


@pytest.fixture
async def hms_peer(pki: TestPki) -> AsyncIterator[HmsPeer]:
    async with HmsPeer(pki) as peer:
        yield peer


@pytest.fixture
def vapid(tmp_path: Path) -> VapidKey:
    return make_vapid_key(tmp_path / "vapid")


@pytest.fixture
def newer_providers(pki: TestPki, web_peer: WebPushPeer, hms_peer: HmsPeer, vapid: VapidKey, tmp_path: Path) -> dict:
    """Huawei Push Kit and Web Push sections for app demo, aimed at this test's peers (`Stack.start(providers=)`)."""
    secret = tmp_path / "hms-secret"
    secret.write_text(DEFAULT_CLIENT_SECRET + "\n")
    return {
        "hms": {"app_id": hms_peer.app_id, "client_id": hms_peer.client_id, "client_secret_file": str(secret),
                "endpoint": hms_peer.base_url, "token_url": hms_peer.token_url, "ca_file": str(pki.ca_file)},
        "webpush": {"vapid_private_key_file": str(vapid.private_key_file), "subject": "mailto:ops@example.com",
                    # The peer listens on this machine: the one host an operator lets subscriptions name.
                    "allowed_hosts": ["127.0.0.1"], "ca_file": str(pki.ca_file)},
    }


@pytest.fixture
async def notification_store(mongo_uri: str) -> AsyncIterator[Stores]:
    """The stores of the notifications collection on a fresh database of the session's nx-27017 (dropped
    afterwards)."""
    database = Database.connect(MongoSettings(uri=mongo_uri, database=unique("store")))
    await database.ensure_indexes()
    yield Stores.on(database)
    await database.client.drop_database(database.db.name)
    await database.close()
