"""A MongoDB that stops answering (a blackholed connection: no reset, no error, nothing) must not hang the API.

Every API request runs under one deadline for all its MongoDB operations (http.store_timeout_ms, PyMongo's
client-side operation timeout): past it the request answers 503 store_unavailable with Retry-After, and
once MongoDB answers again the same requests succeed. Before, a handler waited on the socket for as long as
TCP kept the connection (minutes), holding the caller.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.stack import Stack, auth_headers, wait_until
from tests.reliability.faultproxy import ProxiedServer

pytestmark = pytest.mark.integration

STORE_TIMEOUT_MS = 1000
IOS = "f6" * 32


async def timed(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, dict, float, str | None]:
    started = time.monotonic()
    async with stack.http.request(method, stack.url(path), json=body, headers=auth_headers()) as response:
        answer = await response.json()
        return response.status, answer, time.monotonic() - started, response.headers.get("Retry-After")


REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/devices", {"app": "demo", "token": "a7" * 32, "platform": "ios", "user_id": "bob"}),
    ("GET", "/v1/users/alice/devices", None),
    ("PATCH", f"/v1/devices/demo/{IOS}", {"tags": ["x"]}),
    ("POST", "/v1/notifications",
     {"id": "hung-1", "app": "demo", "target": {"users": ["alice"]}, "message": {"title": "t", "body": "b"}}),
    ("GET", "/v1/notifications/hung-0", None),
    ("GET", "/v1/campaigns", None),
    ("DELETE", "/v1/users/carol", None),
]


@pytest.mark.timeout(120)
async def test_a_hung_mongodb_answers_503_within_the_store_timeout_then_recovers(
    stack: Stack, mongo: ProxiedServer
) -> None:
    http = {"host": "127.0.0.1", "port": 0, "store_timeout_ms": STORE_TIMEOUT_MS}
    await stack.start(mongo_uri=f"mongodb://{mongo.address}", extra={"http": http})
    status, _, _, _ = await timed(stack, "POST", "/v1/devices",
                                  {"app": "demo", "token": IOS, "platform": "ios", "user_id": "alice"})
    assert status == 201

    mongo.proxy.blackhole()  # open connections and new ones alike: bytes go nowhere, nothing is closed
    results = await asyncio.gather(*(timed(stack, method, path, body) for method, path, body in REQUESTS))
    for (method, path, _), (status, answer, seconds, retry_after) in zip(REQUESTS, results, strict=True):
        assert status == 503, (method, path, status, answer)
        assert answer["error"]["code"] == "store_unavailable" and retry_after, (method, path)
        # The deadline plus the API's own work; far below anything TCP would give up in.
        assert seconds < STORE_TIMEOUT_MS / 1000 + 1.5, (method, path, seconds)
    status, ready, seconds, _ = await timed(stack, "GET", "/readyz")
    assert status == 503 and seconds < 5
    # Probes are unauthenticated: which dependency is down, never the driver's message or a host name.
    assert ready["checks"]["mongodb"] == "down" and set(ready["checks"].values()) <= {"ok", "down"}, ready

    mongo.proxy.heal()

    async def answered() -> bool:
        status, _, _, _ = await timed(stack, *REQUESTS[0])
        return status in (200, 201)

    await wait_until(answered, timeout=20, interval=0.2)
    for method, path, body in REQUESTS:
        status, answer, _, _ = await timed(stack, method, path, body)
        assert status < 500, (method, path, status, answer)
    assert (await stack.notification("hung-1")) is not None
