"""Helpers for end-to-end tests: config for a pushsvc wired to the test servers, Kafka I/O, polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymongo import AsyncMongoClient

from pushsvc.api.auth import hash_api_key
from pushsvc.config import Settings, load_settings
from pushsvc.service import PushService
from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.tls import TestPki
from pushsvc.store.notifications import notification_key

API_KEY = "test-key-with-every-scope"
APNS_TOPIC = "com.example.demo"
APNS_KEY_ID = "KEYID12345"
APNS_TEAM_ID = "TEAMID1234"


def write_apns_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


async def close_client(client: AsyncMongoClient) -> None:
    """Close a test's own client. One whose server is already gone (a test's dedicated server, stopped
    before the stack) would wait out server selection (30 s) to end sessions nobody holds any more."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.close(), 2)


def write_config(
    path: Path,
    *,
    bootstrap: str,
    mongo_uri: str,
    database: str,
    kafka: dict[str, str],
    apns_port: int,
    fcm_base_url: str,
    ca_file: Path,
    service_account: Path,
    dispatch: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    more_apps: Sequence[str] = (),
    providers: dict[str, Any] | None = None,
) -> Path:
    """A pushsvc config on the test servers: app "demo" (plus `more_apps`, configured alike) with APNs and FCM
    aimed at the test peers, and `providers` (e.g. hms, webpush sections) added to it; `extra` adds or replaces
    top-level sections."""
    config = {
        # Short group timings: the broker holds a join for half the session timeout.
        # Tansu holds a fetch for the whole wait, even when data arrives: keep it short (config.py).
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "fetch_max_wait_ms": 50, **kafka},
        "mongodb": {"uri": mongo_uri, "database": database},
        "http": {"host": "127.0.0.1", "port": 0},
        "dispatch": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5, "send_timeout_seconds": 5.0,
                     # The backlog gauge every 5 s: tests that look at it wait for it.
                     "poll_interval_seconds": 0.1, "backlog_refresh_seconds": 5.0, **(dispatch or {})},
        "apps": {
            "demo": {
                "apns": {
                    "topic": APNS_TOPIC,
                    "environment": "sandbox",
                    "key_file": str(write_apns_key(path.parent / "apns-key.p8")),
                    "key_id": APNS_KEY_ID,
                    "team_id": APNS_TEAM_ID,
                    "endpoint": f"https://127.0.0.1:{apns_port}",
                    "ca_file": str(ca_file),
                },
                # A QUOTA_EXCEEDED answer holds the project back 0.5 s here, not FCM's 60 (like the short backoff).
                "fcm": {"service_account_file": str(service_account), "endpoint": fcm_base_url,
                        "ca_file": str(ca_file), "quota_backoff_seconds": 0.5},
                **(providers or {}),
            }
        },
        "api_keys": [
            {"name": "test", "hash": hash_api_key(API_KEY),
             "scopes": ["devices:write", "notify", "campaigns", "read", "receipts"], "apps": ["*"]}
        ],
        "log_level": "warning",
        **(extra or {}),
    }
    for app in more_apps:
        config["apps"][app] = config["apps"]["demo"]
    path.write_text(yaml.safe_dump(config))
    return path


class Stack:
    """One test's pushsvc instances plus handles on the servers and peers they talk to."""

    def __init__(
        self,
        tmp_path: Path,
        bootstrap: str,
        mongo_uri: str,
        database: str,
        kafka: dict[str, str],
        pki: TestPki,
        apns: ApnsPeer,
        fcm: FcmPeer,
        service_account: Path,
    ) -> None:
        self.tmp_path = tmp_path
        self.bootstrap = bootstrap
        self.mongo_uri = mongo_uri
        self.database = database
        self.kafka = kafka
        self.pki = pki
        self.apns = apns
        self.fcm = fcm
        self.service_account = service_account
        self.services: list[PushService] = []
        self._http: aiohttp.ClientSession | None = None
        self._mongo = AsyncMongoClient(mongo_uri, tz_aware=True)

    async def use_mongo(self, uri: str) -> None:
        """Point this stack (services started later, and the test's own reads) at another MongoDB."""
        await close_client(self._mongo)
        self.mongo_uri = uri
        self._mongo = AsyncMongoClient(uri, tz_aware=True)

    @property
    def requests_topic(self) -> str:
        return self.kafka["requests_topic"]

    @property
    def db(self) -> Any:
        return self._mongo[self.database]

    def settings(
        self,
        dispatch: dict[str, Any] | None = None,
        mongo_uri: str | None = None,
        extra: dict[str, Any] | None = None,
        more_apps: Sequence[str] = (),
        providers: dict[str, Any] | None = None,
    ) -> Settings:
        """Settings for a pushsvc on the test servers; `extra` adds or replaces top-level sections, `providers`
        adds provider sections to app demo."""
        path = write_config(
            self.tmp_path / f"config-{len(self.services)}.yaml",
            bootstrap=self.bootstrap,
            mongo_uri=mongo_uri or self.mongo_uri,
            database=self.database,
            kafka=self.kafka,
            apns_port=self.apns.port,
            fcm_base_url=self.fcm.base_url,
            ca_file=self.pki.ca_file,
            service_account=self.service_account,
            dispatch=dispatch,
            extra=extra,
            more_apps=more_apps,
            providers=providers,
        )
        return load_settings(path, {})

    async def start(
        self,
        dispatch: dict[str, Any] | None = None,
        mongo_uri: str | None = None,
        extra: dict[str, Any] | None = None,
        more_apps: Sequence[str] = (),
        providers: dict[str, Any] | None = None,
    ) -> PushService:
        service = PushService(self.settings(dispatch, mongo_uri, extra, more_apps, providers))
        self.services.append(service)
        await service.start()
        return service

    async def stop(self, service: PushService) -> None:
        self.services.remove(service)
        await service.stop()

    async def close(self) -> None:
        for service in reversed(self.services):
            await service.stop()
        self.services.clear()
        if self._http is not None:
            await self._http.close()
        await close_client(self._mongo)

    def url(self, path: str, service: PushService | None = None) -> str:
        service = service or self.services[0]
        return f"http://127.0.0.1:{service.port}{path}"

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def register(self, token: str, platform: str, app: str = "demo", **fields: Any) -> dict:
        # An empty token is left out (a web device is then named after its subscription).
        body = {"app": app, **({"token": token} if token else {}), "platform": platform, **fields}
        async with self.http.post(self.url("/v1/devices"), json=body, headers=auth_headers()) as response:
            assert response.status in (200, 201), await response.text()
            return await response.json()

    async def publish(self, *values: dict | bytes, key: bytes | None = None) -> None:
        await publish(self.bootstrap, self.requests_topic, values, key=key)

    async def consuming(self, service: PushService | None = None, timeout: float = 20.0) -> None:
        """Until the service's Kafka consumer has its partitions (/readyz): a request published from then on is
        read at once, not after the group's join, which can take seconds on a busy machine."""

        async def assigned() -> bool:
            async with self.http.get(self.url("/readyz", service)) as response:
                body = await response.json()
            return body.get("consumer", {}).get("state") == "assigned"

        await wait_until(assigned, timeout)

    async def notification(self, request_id: str, app: str = "demo") -> dict | None:
        return await self.db.notifications.find_one({"_id": notification_key(app, request_id)})

    async def wait_finished(self, notification_id: str, timeout: float = 20.0, app: str = "demo") -> dict:
        async def finished() -> dict | None:
            doc = await self.notification(notification_id, app)
            return doc if doc and doc["state"] in ("done", "failed", "cancelled") else None

        return await wait_until(finished, timeout)


async def publish(bootstrap: str, topic: str, values: Iterable[dict | bytes], key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            payload = value if isinstance(value, bytes) else orjson.dumps(value)
            await producer.send_and_wait(topic, payload, key=key)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[Any]:
    """Read `count` messages from the start of `topic` (no group), or fail after `timeout`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
    finally:
        await consumer.stop()
    assert len(records) >= count, f"expected {count} messages on {topic}, got {len(records)}"
    return records


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
