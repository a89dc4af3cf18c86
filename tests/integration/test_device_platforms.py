"""Registering the devices of every provider through the device API: Huawei, web subscriptions, Live Activity
tokens, each with the fields its kind needs and nothing it does not.

A web subscription's endpoint is a URL pushsvc will POST to, chosen by whoever registers the device: the API
refuses one that points at this machine or an internal network (SSRF), whatever spelling the address takes.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.subscriptions import subscription_token
from tests.integration.stack import Stack, auth_headers


def web_subscription(endpoint: str = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk") -> dict:
    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return {"endpoint": endpoint, "keys": {"p256dh": b64(public), "auth": b64(b"0123456789abcdef")}}


async def post_device(stack: Stack, body: dict[str, Any]) -> tuple[int, dict]:
    async with stack.http.post(stack.url("/v1/devices"), json=body, headers=auth_headers()) as response:
        return response.status, await response.json()


async def test_a_huawei_device_is_an_hms_token(stack: Stack) -> None:
    await stack.start()
    status, device = await post_device(stack, {"app": "demo", "token": "hms-" + "t" * 60, "platform": "huawei"})
    assert status == 201
    assert (device["kind"], device["active"], device["subscription"]) == ("hms", True, None)


async def test_a_web_device_is_named_by_its_subscription(stack: Stack) -> None:
    await stack.start()
    subscription = web_subscription()
    status, device = await post_device(stack, {"app": "demo", "platform": "web", "subscription": subscription})
    assert status == 201
    assert device["token"] == subscription_token(subscription["endpoint"])
    assert (device["kind"], device["subscription"]) == ("webpush", subscription)
    # The same subscription again is the same device (200), with its keys refreshed.
    renewed = web_subscription()
    status, again = await post_device(stack, {"app": "demo", "platform": "web", "subscription": renewed})
    assert (status, again["token"], again["subscription"]) == (200, device["token"], renewed)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/push",
        "https://localhost:8443/push",
        "https://LOCALHOST./push",
        "https://10.1.2.3/push",
        "https://192.168.0.10/push",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push",
        "https://[::ffff:127.0.0.1]/push",
        "https://[::ffff:0:7f00:1]/push",  # IPv4-translated 127.0.0.1
        "https://[fd00::1]/push",
        "https://0.0.0.0/push",
        "https://2130706433/push",  # 127.0.0.1 as one integer
        "http://push.example.com/push",
        "https://user:secret@push.example.com/push",
    ],
)
async def test_an_endpoint_pointing_inside_is_refused(stack: Stack, endpoint: str) -> None:
    await stack.start()
    status, body = await post_device(
        stack, {"app": "demo", "platform": "web", "subscription": web_subscription(endpoint)}
    )
    assert status == 400, body
    assert body["error"]["field"] == "subscription.endpoint"
    assert await stack.db.devices.count_documents({}) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subscription": None}, "subscription"),
        ({"subscription": {"endpoint": "https://push.example.com/x", "keys": {"auth": "AAAA"}}},
         "subscription.keys.p256dh"),
        ({"platform": "ios", "token": "a" * 64}, "subscription"),
        ({"kind": "apns"}, "kind"),
    ],
)
async def test_web_registrations_name_what_is_wrong(stack: Stack, change: dict, field: str) -> None:
    await stack.start()
    body = {"app": "demo", "platform": "web", "subscription": web_subscription(), **change}
    status, answer = await post_device(stack, body)
    assert status == 400, answer
    assert answer["error"]["field"] == field


async def test_live_activity_tokens_carry_their_activity(stack: Stack) -> None:
    await stack.start()
    base = {"app": "demo", "platform": "ios"}
    status, answer = await post_device(stack, {**base, "token": "e" * 64, "kind": "apns_liveactivity"})
    assert (status, answer["error"]["field"]) == (400, "activity_id")
    status, answer = await post_device(stack, {**base, "token": "e" * 64, "activity_id": "order-7"})
    assert (status, answer["error"]["field"]) == (400, "activity_id")  # a regular token has no activity
    status, device = await post_device(
        stack, {**base, "token": "e" * 64, "kind": "apns_liveactivity", "activity_id": "order-7"}
    )
    assert status == 201 and (device["kind"], device["activity_id"]) == ("apns_liveactivity", "order-7")
    status, device = await post_device(stack, {**base, "token": "f" * 64, "kind": "apns_pushtostart"})
    assert status == 201 and device["kind"] == "apns_pushtostart"
