"""Before the database's clock has been read, nothing is stamped with another clock: the API says 503."""

from __future__ import annotations

import asyncio
import contextlib

from pushsvc.dev.servers import free_port
from pushsvc.service import PushService
from tests.integration.stack import Stack, auth_headers, wait_until


async def test_api_answers_503_until_the_database_clock_is_read(stack: Stack) -> None:
    # MongoDB unreachable at start: the service waits for it with HTTP up (liveness answers meanwhile).
    service = PushService(stack.settings(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"))
    starting = asyncio.create_task(service.start())
    try:
        await wait_until(lambda: asyncio.sleep(0, service.port), timeout=10, interval=0.05)
        base = f"http://127.0.0.1:{service.port}"
        async with stack.http.get(f"{base}/healthz") as response:
            assert response.status == 200
        device = {"app": "demo", "token": "f0" * 32, "platform": "ios"}
        async with stack.http.post(f"{base}/v1/devices", json=device, headers=auth_headers()) as response:
            assert response.status == 503, await response.text()
            assert (await response.json())["error"]["code"] == "starting"
        async with stack.http.get(f"{base}/readyz") as response:
            assert response.status == 503
    finally:
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await service.stop()
