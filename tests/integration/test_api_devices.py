"""Devices over the HTTP API: register, update tags, delete, list, GDPR erase, auth and validation; OpenAPI."""

from __future__ import annotations

from typing import Any

import aiohttp

from pushsvc.api.openapi import spec
from tests.integration.stack import API_KEY, Stack, auth_headers

IOS = "c3" * 32
IOS_2 = "d4" * 32
ANDROID = "fcm:" + "z" * 60


async def call(stack: Stack, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    headers = kwargs.pop("headers", auth_headers())
    async with stack.http.request(method, stack.url(path), json=body, headers=headers, **kwargs) as response:
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, text


async def test_device_lifecycle_and_gdpr_erase(stack: Stack) -> None:
    await stack.start()
    status, created = await call(stack, "POST", "/v1/devices", {
        "app": "demo", "token": IOS, "platform": "ios", "user_id": "alice", "tags": ["fr", "beta"],
        "locale": "fr-FR", "timezone": "Europe/Paris", "app_version": "1.2.3", "opt_out": ["promo"]})
    assert status == 201, created
    assert created["tags"] == ["fr", "beta"] and created["opt_out"] == ["promo"] and created["active"] is True
    status, again = await call(stack, "POST", "/v1/devices", {"app": "demo", "token": IOS, "platform": "ios",
                                                              "user_id": "alice"})
    assert status == 200 and again["id"] == created["id"]  # unique (app, token): refreshed, not duplicated
    await stack.register(ANDROID, "android", user_id="alice")
    await stack.register(IOS_2, "ios", user_id="bob")

    status, updated = await call(stack, "PATCH", f"/v1/devices/demo/{IOS}", {"tags": ["vip"]})
    assert status == 200 and updated["tags"] == ["vip"]
    status, listed = await call(stack, "GET", "/v1/users/alice/devices?app=demo")
    assert status == 200 and sorted(d["token"] for d in listed["devices"]) == sorted([IOS, ANDROID])

    status, _ = await call(stack, "DELETE", f"/v1/devices/demo/{ANDROID}")
    assert status == 204
    status, body = await call(stack, "DELETE", f"/v1/devices/demo/{ANDROID}")
    assert status == 404 and body["error"]["code"] == "not_found"

    status, erased = await call(stack, "DELETE", "/v1/users/alice")
    assert status == 200 and erased == {"user_id": "alice", "deleted_devices": 1, "scrubbed_notifications": 0}
    assert await stack.db.devices.count_documents({"user_id": "alice"}) == 0
    assert await stack.db.devices.count_documents({"user_id": "bob"}) == 1
    status, listed = await call(stack, "GET", "/v1/users/alice/devices?app=demo")
    assert listed["devices"] == []
    status, _ = await call(stack, "PATCH", f"/v1/devices/demo/{IOS}", {"tags": ["x"]})
    assert status == 404


async def test_validation_names_the_field_and_auth_is_enforced(stack: Stack) -> None:
    await stack.start()
    base = {"app": "demo", "token": IOS, "platform": "ios"}
    cases = [
        ({**base, "platform": "windows"}, "platform"),
        ({**base, "timezone": "Mars/Olympus"}, "timezone"),
        ({**base, "locale": "not a locale"}, "locale"),
        ({**base, "tags": ["ok", 3]}, "tags[1]"),
        ({**base, "token": "short"}, "token"),
        ({**base, "app": "nope"}, "app"),
        ({**base, "colour": "red"}, "colour"),
        ({k: v for k, v in base.items() if k != "token"}, "token"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        status, answer = await call(stack, "POST", "/v1/devices", body)
        assert status == 400, (body, answer)
        assert answer["error"]["field"] == field, (body, answer)
    status, answer = await call(stack, "PATCH", f"/v1/devices/demo/{IOS}", {"tags": "vip"})
    assert status == 400 and answer["error"]["field"] == "tags"
    status, answer = await call(stack, "GET", "/v1/users/alice/devices?app=nope")
    assert status == 400 and answer["error"]["field"] == "app"
    # One app configured: the key acts for it alone, so ?app= may be left out.
    status, answer = await call(stack, "GET", "/v1/users/alice/devices")
    assert status == 200 and "devices" in answer

    status, answer = await call(stack, "POST", "/v1/devices", base, headers={})
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    status, answer = await call(stack, "POST", "/v1/devices", base, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    # a key without the scope: rebuild the auth table with a read-only key
    from pushsvc.api.auth import AUTH_KEY, ApiKeyAuth, hash_api_key
    from pushsvc.api.context import KNOWN_APPS
    from pushsvc.config import ApiKeySettings

    app = stack.services[0].http_app
    app._frozen = False  # test-only: swap the key table of the running app
    apps = frozenset(app[KNOWN_APPS])
    app[AUTH_KEY] = ApiKeyAuth([ApiKeySettings("reader", hash_api_key("reader-key"), ["read"], ["*"]),
                                ApiKeySettings("test", hash_api_key(API_KEY), ["read"], ["*"])], apps)
    status, answer = await call(stack, "POST", "/v1/devices", base, headers={"Authorization": "Bearer reader-key"})
    assert status == 403 and answer["error"]["code"] == "forbidden"

    status, answer = await call(stack, "POST", "/v1/devices", data=b"x" * 300_000,
                                headers={**auth_headers(), "Content-Type": "application/json"})
    assert status in (403, 413)  # scope is checked first for this key; see the 413 check below
    app[AUTH_KEY] = ApiKeyAuth([ApiKeySettings("test", hash_api_key(API_KEY), ["devices:write", "read"], ["*"])], apps)
    status, answer = await call(stack, "POST", "/v1/devices", data=b"[" * 300_000,
                                headers={**auth_headers(), "Content-Type": "application/json"})
    assert status == 413 and answer["error"]["code"] == "body_too_large"


async def test_openapi_covers_every_route_and_nothing_else(stack: Stack) -> None:
    await stack.start()
    async with stack.http.get(stack.url("/openapi.json")) as response:
        assert response.status == 200
        served = await response.json()
    assert served["openapi"].startswith("3.")
    assert served == spec()
    registered = set()
    for route in stack.services[0].http_app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        registered.add((path, route.method.lower()))
    documented = {(path, method) for path, ops in served["paths"].items() for method in ops}
    assert registered == documented
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}], (path, method)
                assert {"401", "403"} <= set(op["responses"]), (path, method)
    assert "bearer" in served["components"]["securitySchemes"]

    # The Kafka contract, with this deployment's topic names.
    from pushsvc.api import asyncapi

    async with stack.http.get(stack.url("/asyncapi.json")) as response:
        assert response.status == 200
        kafka = stack.kafka
        assert await response.json() == asyncapi.spec(kafka["requests_topic"], kafka["dlq_topic"],
                                                      kafka["outcomes_topic"])


async def test_bad_input_never_yields_5xx(stack: Stack) -> None:
    await stack.start()
    probes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/campaigns", {"name": 1}),
        ("POST", "/v1/campaigns", {"name": "x", "app": "demo", "audience": {"users": ["a"]},
                                   "message": {"title": "t"}, "quiet_hours": {"start": "25:00", "end": "01:00"}}),
        ("POST", "/v1/campaigns", {"name": "x", "app": "demo", "audience": {"tokens": ["a"]},
                                   "message": {"title": "t"}}),
        ("POST", "/v1/campaigns", {"name": "x", "app": "demo", "audience": {"users": ["a"]},
                                   "message": {"title": "t"}, "schedule": {"at": "tomorrow"}}),
        ("GET", "/v1/campaigns?limit=abc", None),
        ("GET", "/v1/campaigns?status=zzz", None),
        ("GET", "/v1/campaigns/%20bad", None),
        ("POST", "/v1/campaigns/nope/pause", None),
        ("PATCH", "/v1/devices/demo/short", {"tags": []}),
        ("DELETE", "/v1/users/alice?app=nope", None),
        ("POST", "/v1/notifications", {"id": "x"}),
    ]
    for method, path, body in probes:
        status, answer = await call(stack, method, path, body)
        assert 400 <= status < 500, (method, path, status, answer)
    async with stack.http.post(stack.url("/v1/campaigns"), data=b"{not json",
                               headers={**auth_headers(), "Content-Type": "application/json"}) as response:
        assert response.status == 400
    assert isinstance(aiohttp.__version__, str)
