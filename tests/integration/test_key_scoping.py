"""API keys act only for their apps: a key of one app gets 403 or 404, never data, on every route that reads or
changes another app's devices, notifications or campaigns (OWASP API1, broken object-level authorization).

Before: any `read` key listed any app's device tokens, any `devices:write` key erased a user in every app,
any `notify` key sent for any app.
"""

from __future__ import annotations

import time
from typing import Any

from pushsvc.scheduling.due import epoch_to_iso
from tests.integration.stack import API_KEY, Stack
from tests.reliability.harness import api_key_config

ALL_SCOPES = ["devices:write", "notify", "campaigns", "read", "receipts"]
DEMO_KEY = "key-of-the-demo-backend-0123456789"
SHOP_KEY = "key-of-the-shop-backend-0123456789"
DEMO_IOS = "d4" * 32
OTHER_IOS = "e5" * 32
# Served without a key (probes, scrapers, the API description).
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/asyncapi.json"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(stack: Stack, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with stack.http.request(method, stack.url(path), json=body, headers=bearer(key)) as response:
        text = await response.text()
        return response.status, (await response.json()) if text else None


def alert(request_id: str) -> dict[str, Any]:
    return {"id": request_id, "app": "demo", "target": {"users": ["alice"]}, "message": {"title": "Hi", "body": "x"}}


def campaign(campaign_id: str) -> dict[str, Any]:
    # An hour ahead: it stays scheduled, so a pause, resume or cancel by the wrong key would show.
    return {"id": campaign_id, "name": campaign_id, "app": "demo", "audience": {"segment": {"tags_any": ["promo"]}},
            "message": {"title": "Sale", "body": "Everything must go"},
            "schedule": {"at": epoch_to_iso(time.time() + 3600)}}


# Every route that takes an app, as (method, route, the call a shop key makes at demo's data, its body).
AT_DEMO: list[tuple[str, str, str, Any]] = [
    ("POST", "/v1/devices", "/v1/devices", {"app": "demo", "token": OTHER_IOS, "platform": "ios", "user_id": "eve"}),
    ("GET", "/v1/users/{user_id}/devices", "/v1/users/alice/devices?app=demo", None),
    ("PATCH", "/v1/devices/{app}/{token}", f"/v1/devices/demo/{DEMO_IOS}", {"tags": ["hijacked"]}),
    ("DELETE", "/v1/devices/{app}/{token}", f"/v1/devices/demo/{DEMO_IOS}", None),
    ("DELETE", "/v1/users/{user_id}", "/v1/users/alice?app=demo", None),
    ("POST", "/v1/notifications", "/v1/notifications", alert("order-2")),
    ("GET", "/v1/notifications/{notification_id}", "/v1/notifications/order-1?app=demo", None),
    ("POST", "/v1/notifications/{notification_id}/cancel", "/v1/notifications/order-1/cancel?app=demo", None),
    ("POST", "/v1/campaigns", "/v1/campaigns", campaign("autumn")),
    ("GET", "/v1/campaigns", "/v1/campaigns?app=demo", None),
    ("GET", "/v1/campaigns/{campaign_id}", "/v1/campaigns/spring?app=demo", None),
    ("GET", "/v1/campaigns/{campaign_id}/preview", "/v1/campaigns/spring/preview?app=demo", None),
    ("POST", "/v1/campaigns/{campaign_id}/pause", "/v1/campaigns/spring/pause?app=demo", None),
    ("POST", "/v1/campaigns/{campaign_id}/resume", "/v1/campaigns/spring/resume?app=demo", None),
    ("POST", "/v1/campaigns/{campaign_id}/cancel", "/v1/campaigns/spring/cancel?app=demo", None),
    ("POST", "/v1/receipts", "/v1/receipts", {"app": "demo", "receipts": [
        {"notification_id": "order-1", "token": DEMO_IOS, "event": "opened", "at": epoch_to_iso(time.time())}]}),
]


def served_routes(stack: Stack) -> set[tuple[str, str]]:
    found = set()
    for route in stack.services[0].http_app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and path not in PUBLIC and route.method not in ("HEAD", "OPTIONS", "*"):
            found.add((route.method, path))
    return found


async def test_a_key_of_one_app_gets_403_or_404_and_never_data_of_another(stack: Stack) -> None:
    keys = [
        api_key_config("test", API_KEY, ALL_SCOPES, ["*"]),
        api_key_config("demo-backend", DEMO_KEY, ALL_SCOPES, ["demo"]),
        api_key_config("shop-backend", SHOP_KEY, ALL_SCOPES, ["shop"]),
    ]
    await stack.start(more_apps=["shop"], extra={"api_keys": keys})
    assert served_routes(stack) == {(method, route) for method, route, _, _ in AT_DEMO}, "a route without this test"

    # demo's own key sets up demo's data, without naming the app where it acts for one app only.
    status, _ = await call(stack, DEMO_KEY, "POST", "/v1/devices",
                           {"app": "demo", "token": DEMO_IOS, "platform": "ios", "user_id": "alice", "tags": ["promo"]})
    assert status == 201
    status, _ = await call(stack, DEMO_KEY, "POST", "/v1/notifications", alert("order-1"))
    assert status == 201
    status, _ = await call(stack, DEMO_KEY, "POST", "/v1/campaigns", campaign("spring"))
    assert status == 201
    await stack.wait_finished("order-1", app="demo")
    status, mine = await call(stack, DEMO_KEY, "GET", "/v1/notifications/order-1")
    assert status == 200 and mine["app"] == "demo"

    for method, _route, path, body in AT_DEMO:
        status, answer = await call(stack, SHOP_KEY, method, path, body)
        assert status == 403, (method, path, status, answer)
        assert answer["error"] == {
            "code": "forbidden", "field": "app", "message": "API key 'shop-backend' may not act for app 'demo'"
        }, (method, path)

    # Without ?app the shop key acts for shop, its only app: demo's records are simply not there.
    status, answer = await call(stack, SHOP_KEY, "GET", "/v1/notifications/order-1")
    assert status == 404
    status, answer = await call(stack, SHOP_KEY, "GET", "/v1/campaigns/spring")
    assert status == 404
    status, answer = await call(stack, SHOP_KEY, "POST", "/v1/campaigns/spring/cancel")
    assert status == 404
    status, answer = await call(stack, SHOP_KEY, "GET", "/v1/campaigns")
    assert status == 200 and answer == {"campaigns": []}
    status, answer = await call(stack, SHOP_KEY, "GET", "/v1/users/alice/devices")
    assert status == 200 and answer == {"devices": []}
    status, answer = await call(stack, SHOP_KEY, "DELETE", "/v1/users/alice")
    assert status == 200 and answer["deleted_devices"] == 0 and answer["scrubbed_notifications"] == 0

    # demo's data is as demo left it.
    status, answer = await call(stack, DEMO_KEY, "GET", "/v1/users/alice/devices")
    assert status == 200 and [(d["token"], d["tags"], d["active"]) for d in answer["devices"]] == [
        (DEMO_IOS, ["promo"], True)
    ]
    status, answer = await call(stack, DEMO_KEY, "GET", "/v1/campaigns")
    assert status == 200 and [(c["id"], c["status"]) for c in answer["campaigns"]] == [("spring", "scheduled")]
    assert await stack.notification("order-2") is None
    assert await stack.db.devices.count_documents({"token": OTHER_IOS}) == 0
    assert await stack.notification("campaign:autumn") is None
    notification = await stack.notification("order-1")
    assert notification is not None and notification["target_users"] == ["alice"], "not scrubbed by shop's erasure"
    assert "funnel" not in notification and await stack.db.receipts.count_documents({}) == 0, "shop's receipt"
    assert len(stack.apns.requests_for(DEMO_IOS)) == 1

    # A key for every app still names the app where ids could be ambiguous, and reaches both.
    status, answer = await call(stack, API_KEY, "GET", "/v1/notifications/order-1")
    assert status == 400 and answer["error"]["field"] == "app"
    status, answer = await call(stack, API_KEY, "GET", "/v1/notifications/order-1?app=demo")
    assert status == 200
