"""A device's change of user against one transient MongoDB error on the write that records it: the change is
recorded exactly once, and the registration answers as usual.

A real `pushsvc serve` reaches nx-27017 through the fault proxy, which resets the connection carrying the
conditional write of a new user and its `user_changes` (store/devices.py `_change_user`): before the server sees
it ("request") or as its answer comes back ("reply": written, answer lost). The registration answers 503 (the
store failed, retry later), and the client's retry, as the API asks, finds what is left to do: the change
once, or, written already, nothing more.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.stack import API_KEY, Stack
from tests.reliability.faultproxy import ProxiedServer
from tests.reliability.harness import padded_tokens, proxied_replica

pytestmark = pytest.mark.integration


def user_change_write(data: bytes) -> bool:
    """The write of a device's new user and its recorded changes."""
    return b"update" in data and b"devices" in data and b"user_changes" in data


@pytest.mark.timeout(90)
@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_user_change_whose_write_fails_once_is_recorded_once(
    stack: Stack, mongo: ProxiedServer, when: str
) -> None:
    serve = proxied_replica(stack, mongo)
    await serve.start()
    try:
        (phone,) = padded_tokens("0c", 1, "e")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:

            async def register(user: str) -> int:
                body = {"app": "demo", "token": phone, "platform": "ios", "user_id": user}
                async with http.post(f"{serve.url}/v1/devices", json=body) as response:
                    assert response.status in (200, 201, 503), await response.text()
                    return response.status

            assert await register("first") == 201
            trap = mongo.proxy.trap(user_change_write, when=when)  # type: ignore[arg-type]
            first_try = await register("second")
            assert trap.sprung == 1, "the change's write never went through the proxy"
            assert first_try in (200, 503), first_try  # 200 if the driver's own retry went through
            assert await register("second") == 200  # the client's retry (or a repeat): done once
        device = await stack.db.devices.find_one({"app": "demo", "token": phone})
        assert device["user_id"] == "second", device
        assert [c["user"] for c in device["user_changes"]] == ["first", "second"], device
    finally:
        await serve.terminate()
