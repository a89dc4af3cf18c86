"""Request ids are unique per app: the same id in two apps is two notifications, each found within its app.

Seen by the review: another app's request with the same id was silently absorbed as a duplicate, and
GET /v1/notifications/{id} returned the other app's record.
"""

from __future__ import annotations

import orjson

from tests.integration.stack import Stack, auth_headers, consume

DEMO_IOS = "d1" * 32
SHOP_IOS = "e2" * 32


def alert(app: str, request_id: str, target: dict) -> dict:
    return {"id": request_id, "app": app, "target": target, "message": {"title": "Hi", "body": app}}


async def get(stack: Stack, path: str) -> tuple[int, dict]:
    async with stack.http.get(stack.url(path), headers=auth_headers()) as response:
        return response.status, await response.json()


async def test_the_same_request_id_in_two_apps_is_two_notifications(stack: Stack) -> None:
    await stack.start(more_apps=["shop"])
    await stack.register(DEMO_IOS, "ios", app="demo", user_id="alice")
    await stack.register(SHOP_IOS, "ios", app="shop", user_id="alice")
    await stack.publish(alert("demo", "order-1", {"users": ["alice"]}), alert("shop", "order-1", {"users": ["alice"]}))
    demo = await stack.wait_finished("order-1", app="demo")
    shop = await stack.wait_finished("order-1", app="shop")
    assert demo["counts"]["delivered"] == 1 and shop["counts"]["delivered"] == 1
    assert [r.body["aps"]["alert"]["body"] for r in stack.apns.requests_for(DEMO_IOS)] == ["demo"]
    assert [r.body["aps"]["alert"]["body"] for r in stack.apns.requests_for(SHOP_IOS)] == ["shop"]

    status, found = await get(stack, "/v1/notifications/order-1?app=shop")
    assert status == 200 and found["id"] == "order-1" and found["app"] == "shop"
    status, found = await get(stack, "/v1/notifications/order-1?app=demo")
    assert status == 200 and found["app"] == "demo"
    status, error = await get(stack, "/v1/notifications/order-1")
    assert status == 400 and error["error"]["field"] == "app", "ambiguous with two apps configured"

    # Over HTTP too: the id already used by demo is new in shop (201), and repeated in shop (200).
    body = alert("shop", "order-2", {"users": ["alice"]})
    for app, expected in (("demo", 201), ("shop", 201), ("shop", 200)):
        async with stack.http.post(
            stack.url("/v1/notifications"), json={**body, "app": app}, headers=auth_headers()
        ) as response:
            assert response.status == expected, (app, await response.text())
            assert (await response.json())["app"] == app

    events = [orjson.loads(r.value) for r in await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 2)]
    assert sorted((e["app"], e["id"]) for e in events if e["id"] == "order-1") == [
        ("demo", "order-1"),
        ("shop", "order-1"),
    ]


async def test_one_app_configured_needs_no_app_and_campaign_ids_are_reserved(stack: Stack) -> None:
    await stack.start()
    await stack.register(DEMO_IOS, "ios", user_id="bob")
    await stack.publish(alert("demo", "solo", {"users": ["bob"]}))
    await stack.wait_finished("solo")
    status, found = await get(stack, "/v1/notifications/solo")
    assert status == 200 and found["app"] == "demo"
    status, error = await get(stack, "/v1/notifications/solo?app=elsewhere")
    assert status == 400 and error["error"]["field"] == "app"

    request = alert("demo", "campaign:spring", {"users": ["bob"]})
    async with stack.http.post(stack.url("/v1/notifications"), json=request, headers=auth_headers()) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "id"
