"""Device registration by mobile apps (via their backend) and per-user listing."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps, require
from pushsvc.api.context import DEVICES, KNOWN_APPS, NOTIFICATIONS, WEB_ALLOWED_HOSTS
from pushsvc.api.errors import json_error
from pushsvc.api.validation import (
    LOCALE_PATTERN,
    TOKEN_PATTERN,
    app_of,
    field_name,
    json_body,
    known_app,
    opt_str,
    str_list,
)
from pushsvc.model import MAX_ID_LENGTH, PLATFORMS, RequestError
from pushsvc.scheduling.due import is_known_timezone
from pushsvc.store.devices import DeviceRecord, kind_of
from pushsvc.subscriptions import parse_subscription, subscription_token
from pushsvc.token_kinds import KIND_NAMES, default_kind, kinds_for_platform

routes = web.RouteTableDef()

DEVICE_FIELDS = {
    "app",
    "token",
    "platform",
    "kind",
    "user_id",
    "tags",
    "locale",
    "timezone",
    "app_version",
    "opt_out",
    "subscription",
    "activity_id",
}


def parse_device(
    body: Any, known_apps: frozenset[str], web_hosts: Mapping[str, Collection[str]] | None = None
) -> DeviceRecord:
    """A device registration, checked strictly. `web_hosts`: per app, the hosts a web subscription's endpoint
    may name although internal (apps.<app>.webpush.allowed_hosts)."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    unknown = sorted(set(body) - DEVICE_FIELDS)
    if unknown:
        raise RequestError(field_name(unknown[0]), f"unknown field (allowed: {', '.join(sorted(DEVICE_FIELDS))})")
    app = opt_str(body, "app", 128)
    if app is None:
        raise RequestError("app", "required")
    if app not in known_apps:
        raise RequestError("app", f"unknown app {app!r}")
    platform = body.get("platform")
    if platform not in PLATFORMS:
        raise RequestError("platform", f"must be one of {', '.join(PLATFORMS)}")
    kind = parse_kind(body.get("kind"), platform)
    subscription = None
    if platform == "web":
        subscription = parse_subscription(body.get("subscription"), "subscription", (web_hosts or {}).get(app, ()))
    elif "subscription" in body:
        raise RequestError("subscription", "only for platform web")
    token = opt_str(body, "token", 4096, TOKEN_PATTERN)
    if token is None:
        if subscription is None:
            raise RequestError("token", "required")
        token = subscription_token(subscription.endpoint)
    activity_id = opt_str(body, "activity_id", MAX_ID_LENGTH)
    if kind == "apns_liveactivity" and activity_id is None:
        raise RequestError("activity_id", "required for a Live Activity update token (the activity it belongs to)")
    if kind != "apns_liveactivity" and activity_id is not None:
        raise RequestError("activity_id", "only for kind apns_liveactivity")
    timezone = opt_str(body, "timezone", 64)
    if timezone is not None and not is_known_timezone(timezone):
        raise RequestError("timezone", f"not an IANA timezone name: {timezone!r}")
    return DeviceRecord(
        app=app,
        token=token,
        platform=platform,
        kind=kind,
        user_id=opt_str(body, "user_id", 256),
        tags=str_list(body, "tags"),
        locale=opt_str(body, "locale", 35, LOCALE_PATTERN),
        timezone=timezone,
        app_version=opt_str(body, "app_version", 64),
        opt_out=str_list(body, "opt_out"),
        subscription=subscription,
        activity_id=activity_id,
    )


def parse_kind(value: Any, platform: str) -> str:
    """What the token is for; by default the platform's usual kind (ios: apns, android: fcm)."""
    if value is None:
        return default_kind(platform) or ""
    if value not in KIND_NAMES:
        raise RequestError("kind", f"must be one of {', '.join(KIND_NAMES)}")
    allowed = kinds_for_platform(platform)
    if value not in allowed:
        raise RequestError("kind", f"{value!r} is not a token kind for platform {platform} ({', '.join(allowed)})")
    return str(value)


def device_view(doc: dict) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "app": doc["app"],
        "token": doc["token"],
        "platform": doc["platform"],
        "kind": kind_of(doc),
        "user_id": doc.get("user_id"),
        "tags": doc.get("tags", []),
        "locale": doc.get("locale"),
        "timezone": doc.get("timezone"),
        "app_version": doc.get("app_version"),
        "opt_out": doc.get("opt_out", []),
        "subscription": doc.get("subscription"),
        "activity_id": doc.get("activity_id"),
        "active": bool(doc.get("active", True)),
        "deactivated_reason": doc.get("deactivated_reason"),
        # Epoch seconds of the last registration; null for devices registered before it was recorded.
        "registered_at": doc.get("registered_at"),
    }


@routes.post("/v1/devices")
@require("devices:write")
async def register_device(request: web.Request) -> web.Response:
    """Register or refresh a device token (idempotent: 201 when new, 200 when it existed)."""
    device = parse_device(await json_body(request), request.app[KNOWN_APPS], request.app[WEB_ALLOWED_HOSTS])
    permit(request, device.app)
    doc, created = await request.app[DEVICES].upsert(device)
    return web.json_response(device_view(doc), status=201 if created else 200)


@routes.get("/v1/users/{user_id}/devices")
@require("read")
async def list_user_devices(request: web.Request) -> web.Response:
    """The user's devices in `?app=` (optional when the key acts for one app only)."""
    docs = await request.app[DEVICES].for_user(app_of(request), request.match_info["user_id"])
    return web.json_response({"devices": [device_view(d) for d in docs]})


def _device_key(request: web.Request) -> tuple[str, str]:
    app = permit(request, known_app(request, request.match_info["app"]))
    token = request.match_info["token"]
    if not TOKEN_PATTERN.match(token):
        raise RequestError("token", "has an invalid format")
    return app, token


@routes.patch("/v1/devices/{app}/{token}")
@require("devices:write")
async def update_device_tags(request: web.Request) -> web.Response:
    """Replace a device's tags: body {"tags": [...]}."""
    app, token = _device_key(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    unknown = sorted(set(body) - {"tags"})
    if unknown:
        raise RequestError(field_name(unknown[0]), "unknown field (allowed: tags)")
    if "tags" not in body:
        raise RequestError("tags", "required")
    doc = await request.app[DEVICES].update_tags(app, token, str_list(body, "tags"))
    if doc is None:
        return json_error(404, "not_found", "no device with that app and token")
    return web.json_response(device_view(doc))


@routes.delete("/v1/devices/{app}/{token}")
@require("devices:write")
async def delete_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    if not await request.app[DEVICES].delete(app, token):
        return json_error(404, "not_found", "no device with that app and token")
    return web.Response(status=204)


@routes.delete("/v1/users/{user_id}")
@require("devices:write")
async def erase_user(request: web.Request) -> web.Response:
    """GDPR erasure: delete every device of the user (in `?app=`, or in every app the key may act for) and
    remove the user and their tokens from every stored notification request of those apps."""
    user_id = request.match_info["user_id"]
    if len(user_id) > 256:
        raise RequestError("user_id", "at most 256 characters")
    app = request.query.get("app")
    apps = [permit(request, known_app(request, app))] if app is not None else sorted(permitted_apps(request))
    devices, notifications = request.app[DEVICES], request.app[NOTIFICATIONS]
    deleted = scrubbed = 0
    for one_app in apps:
        # Requests first, while the devices still tell which tokens are the user's (a retry after a failure
        # part-way still knows them); then the devices; then requests recorded meanwhile.
        tokens = await devices.tokens_of_user(one_app, user_id)
        scrubbed += await notifications.erase_user(one_app, user_id, tokens)
        deleted += await devices.erase_user([one_app], user_id)
        scrubbed += await notifications.erase_user(one_app, user_id, tokens)
    return web.json_response({"user_id": user_id, "deleted_devices": deleted, "scrubbed_notifications": scrubbed})
