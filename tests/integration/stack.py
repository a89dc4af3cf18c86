"""Helpers for end-to-end tests: config for a pushsvc wired to the test servers, Kafka I/O, polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.api.auth import hash_api_key
from pushsvc.app import PushService
from pushsvc.config import Settings, load_settings

API_KEY = "test-key-with-every-scope"
APNS_TOPIC = "com.example.demo"


def write_apns_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


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
) -> Path:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, **kafka},
        "mongodb": {"uri": mongo_uri, "database": database},
        "http": {"host": "127.0.0.1", "port": 0},
        "dispatch": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5, "send_timeout_seconds": 5.0,
                     "poll_interval_seconds": 0.1, **(dispatch or {})},
        "apps": {
            "demo": {
                "apns": {
                    "topic": APNS_TOPIC,
                    "environment": "sandbox",
                    "key_file": str(write_apns_key(path.parent / "apns-key.p8")),
                    "key_id": "KEYID12345",
                    "team_id": "TEAMID1234",
                    "endpoint": f"127.0.0.1:{apns_port}",
                    "ca_file": str(ca_file),
                },
                "fcm": {"service_account_file": str(service_account), "endpoint": fcm_base_url,
                        "ca_file": str(ca_file)},
            }
        },
        "api_keys": [
            {"name": "test", "hash": hash_api_key(API_KEY), "scopes": ["devices:write", "notify", "campaigns", "read"]}
        ],
        "log_level": "warning",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def settings_from(path: Path) -> Settings:
    return load_settings(path)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[PushService]:
    service = PushService(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


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
