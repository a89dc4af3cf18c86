"""Frequency caps against one transient MongoDB error on their own write: a user is counted once, never capped by
their own push, and nobody is sent twice.

A real `pushsvc serve` reaches nx-27017 through the fault proxy, which resets the connection carrying the caps'
admission write (the bulk insert or versioned update of `frequency` documents): before the server sees it
("request": nothing counted) or as its answer comes back ("reply": counted, answer lost, the case a retry must
recognise as its own). A second campaign then finds every user at the cap: the first was counted exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest
import yaml

from tests.integration.stack import API_KEY, Stack, wait_until
from tests.reliability.faultproxy import ProxiedServer
from tests.reliability.harness import FINISHED, padded_tokens, proxied_replica

pytestmark = pytest.mark.integration

USERS = 6


def caps_write(data: bytes) -> bool:
    """The admission's write of users' capped sends (store/caps.py)."""
    return (b"insert" in data or b"update" in data) and b"frequency" in data and b"sends" in data


async def campaign(url: str, campaign_id: str) -> None:
    body = {"id": campaign_id, "name": campaign_id, "app": "demo", "audience": {"segment": {"tags_any": ["capped"]}},
            "message": {"title": "Sale"}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(f"{url}/v1/campaigns", json=body) as response:
        assert response.status == 201, await response.text()


async def finished(stack: Stack, notification_id: str) -> dict:
    async def final() -> dict | None:
        doc = await stack.notification(notification_id)
        return doc if doc and doc["state"] in FINISHED else None

    return await wait_until(final, timeout=60, interval=0.2)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_caps_write_failing_once_counts_each_user_once_and_sends_each_device_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    serve = proxied_replica(stack, mongo)
    serve.config["apps"]["demo"]["frequency_caps"] = {"limits": [{"max": 1, "window_hours": 24}]}
    serve.config_path.write_text(yaml.safe_dump(serve.config))
    await serve.start()
    try:
        devices = padded_tokens("cf", 2 * USERS, "e")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            for n, token in enumerate(devices):
                user = f"u{n % USERS}"  # two devices per user
                body = {"app": "demo", "token": token, "platform": "ios", "tags": ["capped"], "user_id": user}
                async with http.post(f"{serve.url}/v1/devices", json=body) as response:
                    assert response.status in (200, 201), await response.text()
        trap = mongo.proxy.trap(caps_write, when=when)  # type: ignore[arg-type]
        await campaign(serve.url, "first")
        first = await finished(stack, "campaign:first")
        assert trap.sprung == 1, "the caps' write never went through the proxy"
        assert first["state"] == "done", first
        assert (first["counts"]["delivered"], first["counts"]["capped"]) == (2 * USERS, 0), first["counts"]
        await asyncio.sleep(0.5)
        assert Counter(r.token for r in stack.apns.requests) == Counter(dict.fromkeys(devices, 1))

        # Counted exactly once per user: the next campaign finds every user at the cap of 1.
        docs = [d async for d in stack.db.frequency.find({})]
        assert len(docs) == USERS and all([s["n"] for s in d["sends"]] == ["campaign:first"] for d in docs), docs
        await campaign(serve.url, "second")
        second = await finished(stack, "campaign:second")
        assert (second["counts"]["capped"], second["counts"]["delivered"]) == (2 * USERS, 0), second["counts"]
        assert len(stack.apns.requests) == 2 * USERS
    finally:
        await serve.terminate()
