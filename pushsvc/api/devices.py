"""Device registration by mobile apps (via their backend) and per-user listing.

The registration contract itself (parse_device) is pushsvc/device_contract.py, shared with the import CLI;
answers are built from the typed records the store reads (store/devices.py `read_device`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushsvc.api.auth import permit, permitted_apps, require
from pushsvc.api.context import DEVICES, KNOWN_APPS, NOTIFICATIONS, WEB_ALLOWED_HOSTS
from pushsvc.api.errors import json_error
from pushsvc.api.validation import app_of, json_body, known_app
from pushsvc.device_contract import TOKEN_PATTERN, Device, parse_device, str_list
from pushsvc.model import RequestError
from pushsvc.model.fields import field_name
from pushsvc.store.device_documents import subscription_fields
from pushsvc.store.erasure import Erasure

routes = web.RouteTableDef()


def device_view(device: Device) -> dict[str, Any]:
    """A device as the API shows it (the `Device` schema of /openapi.json), from the record the store read."""
    return {
        "id": device.id,
        "app": device.app,
        "token": device.token,
        "platform": device.platform,
        "kind": device.kind,
        "user_id": device.user_id,
        "tags": list(device.tags),
        "locale": device.locale,
        "timezone": device.timezone,
        "app_version": device.app_version,
        "opt_out": list(device.opt_out),
        "subscription": subscription_fields(device.subscription),
        "activity_id": device.activity_id,
        "active": device.active,
        "deactivated_reason": device.deactivated_reason,
        # Epoch seconds of the last registration; null for devices registered before it was recorded.
        "registered_at": device.registered_at,
    }


@routes.post("/v1/devices")
@require("devices:write")
async def register_device(request: web.Request) -> web.Response:
    """Register or refresh a device token (idempotent: 201 when new, 200 when it existed)."""
    device = parse_device(await json_body(request), request.app[KNOWN_APPS], request.app[WEB_ALLOWED_HOSTS])
    permit(request, device.app)
    stored, created = await request.app[DEVICES].upsert(device)
    return web.json_response(device_view(stored), status=201 if created else 200)


@routes.get("/v1/users/{user_id}/devices")
@require("read")
async def list_user_devices(request: web.Request) -> web.Response:
    """The user's devices in `?app=` (optional when the key acts for one app only)."""
    devices = await request.app[DEVICES].for_user(app_of(request), request.match_info["user_id"])
    return web.json_response({"devices": [device_view(d) for d in devices]})


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
    device = await request.app[DEVICES].update_tags(app, token, str_list(body, "tags"))
    if device is None:
        return json_error(404, "not_found", "no device with that app and token")
    return web.json_response(device_view(device))


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
    devices, erasure = request.app[DEVICES], Erasure(request.app[NOTIFICATIONS].database)
    deleted = scrubbed = 0
    for one_app in apps:
        # Requests first, while the devices still tell which tokens are the user's (a retry after a failure
        # part-way still knows them); then the devices; then requests recorded meanwhile.
        tokens = await devices.tokens_of_user(one_app, user_id)
        scrubbed += await erasure.erase_user(one_app, user_id, tokens)
        deleted += await devices.erase_user([one_app], user_id)
        scrubbed += await erasure.erase_user(one_app, user_id, tokens)
        await erasure.forget_user_state(one_app, user_id, tokens)
    return web.json_response({"user_id": user_id, "deleted_devices": deleted, "scrubbed_notifications": scrubbed})
