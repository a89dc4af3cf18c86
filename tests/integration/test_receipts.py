"""Receipts and opens (POST /v1/receipts) against a real pushsvc, nx-27017, Tansu and the provider peers.

What each test shows: receipts after a real delivery move the notification's and the campaign's funnel, per
platform and locale; a repeated or concurrently repeated receipt counts once and is announced once on
push.outcomes; receipts for an unknown notification (or device) are counted and dropped with nothing stored;
a bad batch is a 400 naming the field and records nothing, not even its good items; another app's key gets
403, and naming its own app cannot reach this app's notification.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from pushsvc.scheduling.due import epoch_to_iso
from tests.integration.stack import API_KEY, Stack, auth_headers, wait_until
from tests.integration.test_campaigns import api, campaign, register_many, token
from tests.reliability.harness import api_key_config

pytestmark = pytest.mark.integration

IOS = "a7" * 32
ANDROID = "fcm:" + "r" * 60
SHOP_KEY = "key-of-the-shop-backend-0123456789"
ALL_SCOPES = ["devices:write", "notify", "campaigns", "read", "receipts"]


def receipt(notification_id: str, event: str, at: float | None = None, **device: str) -> dict[str, Any]:
    return {"notification_id": notification_id, "event": event, "at": epoch_to_iso(at or time.time()), **device}


async def post(stack: Stack, receipts: list[dict[str, Any]], app: str = "demo", key: str = API_KEY) -> tuple[int, Any]:
    async with stack.http.post(stack.url("/v1/receipts"), json={"app": app, "receipts": receipts},
                               headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, await response.json()


async def get(stack: Stack, path: str) -> dict[str, Any]:
    async with stack.http.get(stack.url(path), headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def send(stack: Stack, request_id: str, target: dict[str, Any]) -> dict[str, Any]:
    body = {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hi", "body": "there"}}
    async with stack.http.post(stack.url("/v1/notifications"), json=body, headers=auth_headers()) as response:
        assert response.status == 201, await response.text()
    return await stack.wait_finished(request_id)


async def metric(stack: Stack, **labels: str) -> float:
    async with stack.http.get(stack.url("/metrics")) as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pushsvc_receipts_total" and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def receipt_events(stack: Stack, settle_seconds: float = 2.0) -> list[tuple[bytes, dict[str, Any]]]:
    """Every receipt event on the test's outcomes topic (key, value), read until none came for a while."""
    consumer = AIOKafkaConsumer(stack.kafka["outcomes_topic"], bootstrap_servers=stack.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[tuple[bytes, dict[str, Any]]] = []
    try:
        quiet_until = time.monotonic() + settle_seconds
        while time.monotonic() < quiet_until:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    quiet_until = time.monotonic() + settle_seconds
                    value = orjson.loads(record.value)
                    if value.get("type") == "receipt":
                        found.append((record.key, value))
    finally:
        await consumer.stop()
    return found


async def test_receipts_after_a_real_delivery_move_the_funnel_per_platform_and_locale(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="alice", locale="fr-FR", tags=["fr"])
    await stack.register(ANDROID, "android", user_id="bob", locale="de_DE", tags=["fr"])
    done = await send(stack, "order-1", {"tokens": [IOS, ANDROID]})
    assert done["counts"]["delivered"] == 2

    status, answer = await post(stack, [
        receipt("order-1", "received", token=IOS),
        receipt("order-1", "opened", token=ANDROID),  # no "received" from Android: the open implies it
    ])
    assert status == 200, answer
    assert answer == {"app": "demo", "results": ["recorded", "recorded"],
                      "counts": {"recorded": 2, "duplicate": 0, "unknown_notification": 0, "unknown_device": 0}}
    funnel = (await get(stack, "/v1/notifications/order-1?app=demo"))["funnel"]
    assert funnel == {
        "targeted": 2, "sent": 2, "delivered": 2, "received": 2, "opened": 1,
        "rates": {"sent": 1.0, "delivered": 1.0, "received": 1.0, "opened": 0.5, "open_rate": 0.5},
        "by": {
            "platform": {"ios": {"received": 1, "opened": 0, "open_rate": 0.0},
                         "android": {"received": 1, "opened": 1, "open_rate": 1.0}},
            "locale": {"fr": {"received": 1, "opened": 0, "open_rate": 0.0},
                       "de": {"received": 1, "opened": 1, "open_rate": 1.0}},
        },
    }

    # A campaign's funnel, by user_id (counted once per user).
    async with stack.http.post(stack.url("/v1/campaigns"), headers=auth_headers(), json={
        "id": "spring", "name": "Spring", "app": "demo", "audience": {"segment": {"tags_any": ["fr"]}},
        "message": {"title": "Sale", "body": "Now"},
    }) as response:
        assert response.status == 201, await response.text()
    await stack.wait_finished("campaign:spring")
    status, answer = await post(stack, [receipt("campaign:spring", "opened", user_id="alice"),
                                        receipt("campaign:spring", "opened", user_id="alice")])
    assert answer["results"] == ["recorded", "duplicate"]
    campaign = await get(stack, "/v1/campaigns/spring?app=demo")
    assert campaign["funnel"]["delivered"] == 2 and campaign["funnel"]["opened"] == 1
    assert campaign["funnel"]["received"] == 1 and campaign["funnel"]["rates"]["open_rate"] == 0.5
    assert campaign["funnel"]["by"]["platform"] == {"ios": {"received": 1, "opened": 1, "open_rate": 1.0}}


async def test_repeats_count_once_and_are_announced_once(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="alice", locale="fr-FR")
    await stack.register(ANDROID, "android", user_id="bob", locale="de-DE")
    await send(stack, "order-2", {"tokens": [IOS, ANDROID]})
    batch = [receipt("order-2", "received", token=IOS), receipt("order-2", "opened", token=IOS),
             receipt("order-2", "opened", token=ANDROID)]
    before = await metric(stack, app="demo", outcome="duplicate")

    status, first = await post(stack, batch)
    assert status == 200 and first["results"] == ["recorded", "recorded", "recorded"], first
    status, again = await post(stack, batch)  # a mobile backend retrying the whole batch
    assert status == 200 and again["results"] == ["duplicate"] * 3, again
    # Concurrent copies of one new receipt: exactly one records it.
    late = [receipt("order-2", "received", token=ANDROID, at=time.time() - 1)]
    answers = await asyncio.gather(*(post(stack, late) for _ in range(6)))
    assert sorted(a["results"][0] for _, a in answers) == ["duplicate"] * 6, answers  # implied by the open above
    fresh = await send(stack, "order-3", {"tokens": [IOS]})
    assert fresh["state"] == "done"
    answers = await asyncio.gather(*(post(stack, [receipt("order-3", "opened", token=IOS)]) for _ in range(6)))
    assert sorted(a["results"][0] for _, a in answers) == ["duplicate"] * 5 + ["recorded"], answers

    funnel = (await get(stack, "/v1/notifications/order-2?app=demo"))["funnel"]
    assert (funnel["received"], funnel["opened"]) == (2, 2)
    funnel = (await get(stack, "/v1/notifications/order-3?app=demo"))["funnel"]
    assert (funnel["received"], funnel["opened"]) == (1, 1)
    assert await stack.db.receipts.count_documents({}) == 6  # order-2: 2 devices x 2 events; order-3: 2
    assert await metric(stack, app="demo", outcome="duplicate") - before == 3 + 6 + 5

    events = await receipt_events(stack)
    # One per new receipt (the implied "received" of Android's open included), keyed by the notification.
    assert sorted((key, e["id"], e["event"], e["platform"], e["implied"]) for key, e in events) == sorted([
        (b"demo:order-2", "order-2", "received", "ios", False),
        (b"demo:order-2", "order-2", "opened", "ios", False),
        (b"demo:order-2", "order-2", "opened", "android", False),
        (b"demo:order-2", "order-2", "received", "android", True),
        (b"demo:order-3", "order-3", "opened", "ios", False),
        (b"demo:order-3", "order-3", "received", "ios", True),
    ])


async def test_unknown_notifications_and_devices_are_counted_and_dropped(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="alice")
    await send(stack, "order-4", {"tokens": [IOS]})
    before = await metric(stack, app="demo", event="opened", outcome="unknown_notification")
    before_device = await metric(stack, app="demo", event="received", outcome="unknown_device")
    status, answer = await post(stack, [
        receipt("never-sent", "opened", token=IOS),
        receipt("order-4", "received", token="ff" * 32),
        receipt("order-4", "received", user_id="nobody"),
    ])
    assert status == 200 and answer["results"] == ["unknown_notification", "unknown_device", "unknown_device"]
    assert await metric(stack, app="demo", event="opened", outcome="unknown_notification") - before == 1
    assert await metric(stack, app="demo", event="received", outcome="unknown_device") - before_device == 2
    assert await stack.db.receipts.count_documents({}) == 0
    assert "funnel" not in (await stack.notification("order-4") or {})
    assert await stack.notification("never-sent") is None


async def test_a_bad_batch_is_a_400_naming_the_field_and_records_nothing(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="alice")
    done = await send(stack, "order-5", {"tokens": [IOS]})
    good = receipt("order-5", "received", token=IOS)
    cases = [
        ([good, {**good, "event": "clicked"}], "receipts[1].event"),
        ([good, receipt("order-5", "opened", at=time.time() + 3600, token=IOS)], "receipts[1].at"),
        ([good, receipt("order-5", "opened", at=done["created_at"] - 3600, token=IOS)], "receipts[1].at"),
        ([{**good, "user_id": "alice"}], "receipts[0].token"),
        ([{**good, "at": "2026-12-04T21:00:00"}], "receipts[0].at"),
        ([good] * 501, "receipts"),
    ]
    for items, field in cases:
        status, answer = await post(stack, items)
        assert status == 400 and answer["error"]["field"] == field, (field, answer)
    status, answer = await post(stack, [good], app="elsewhere")
    assert status == 400 and answer["error"]["field"] == "app"
    assert await stack.db.receipts.count_documents({}) == 0
    assert "funnel" not in (await stack.notification("order-5") or {})


async def test_another_apps_key_cannot_post_receipts_for_this_apps_notification(stack: Stack) -> None:
    keys = [api_key_config("test", API_KEY, ALL_SCOPES, ["*"]), api_key_config("shop", SHOP_KEY, ALL_SCOPES, ["shop"]),
            api_key_config("reader", "key-that-only-reads-0123456789", ["read"], ["*"])]
    await stack.start(more_apps=["shop"], extra={"api_keys": keys})
    await stack.register(IOS, "ios", user_id="alice")
    await stack.register(IOS, "ios", app="shop", user_id="alice")  # the same token in the shop app
    await send(stack, "order-6", {"tokens": [IOS]})
    status, answer = await post(stack, [receipt("order-6", "opened", token=IOS)], key=SHOP_KEY)
    assert status == 403 and answer["error"] == {
        "code": "forbidden", "field": "app", "message": "API key 'shop' may not act for app 'demo'"}
    # Naming its own app, the id is looked up in shop: demo's notification is not there.
    status, answer = await post(stack, [receipt("order-6", "opened", token=IOS)], app="shop", key=SHOP_KEY)
    assert status == 200 and answer["results"] == ["unknown_notification"]
    status, answer = await post(stack, [receipt("order-6", "opened", token=IOS)],
                                key="key-that-only-reads-0123456789")
    assert status == 403 and "receipts" in answer["error"]["message"]
    assert await stack.db.receipts.count_documents({}) == 0
    assert (await get(stack, "/v1/notifications/order-6?app=demo"))["funnel"]["opened"] == 0


async def test_a_split_campaigns_receipts_count_on_the_campaign_and_survive_its_settle(stack: Stack) -> None:
    """Receipts name the campaign (every range sends its request id); posted while its ranges still run, they
    stay counted when the settle writes the summed counts."""
    await stack.start(dispatch={"range_devices": 50, "max_active_ranges": 1, "poll_interval_seconds": 0.3,
                                "chunk_size": 10})
    tokens = [token(i, "f") for i in range(120)]
    await register_many(stack, tokens, tags=["promo"], locale="ja-JP")
    stack.apns.set_default(delay=0.1)  # 12 chunks of 10: the ranges run for over a second
    status, _ = await api(stack, "POST", "/v1/campaigns", campaign("wide"))
    assert status == 201
    first = await wait_until(lambda: asyncio.sleep(0, [r.token for r in stack.apns.requests][:5]), 20)
    assert len(first) == 5
    status, answer = await post(stack, [receipt("campaign:wide", "opened", token=t) for t in first])
    assert status == 200 and answer["results"] == ["recorded"] * 5, answer
    parent = await stack.notification("campaign:wide")
    assert parent is not None and not parent.get("settled") and parent["funnel"]["opened"] == 5, "settled already"
    doc = await stack.wait_finished("campaign:wide", timeout=60)
    assert doc["ranges"] >= 2 and doc["settled"] and doc["counts"]["delivered"] == 120
    status, view = await api(stack, "GET", "/v1/campaigns/wide")
    assert status == 200 and view["funnel"]["delivered"] == 120 and view["funnel"]["opened"] == 5, view["funnel"]
    assert view["funnel"]["by"]["locale"] == {"ja": {"received": 5, "opened": 5, "open_rate": 1.0}}
    assert view["funnel"]["rates"]["open_rate"] == round(5 / 120, 4)
