"""The OpenAPI 3 description of every route, served at /openapi.json (a test keeps it in step with routes).

The paths are here; the schemas are openapi_schemas (answers) and openapi_inputs (request bodies, built from
the validators' own constants).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushsvc import __version__
from pushsvc.api.openapi_inputs import APP, CAMPAIGN_ID_SCHEMA, TOKEN
from pushsvc.api.openapi_schemas import SCHEMAS, STATES
from pushsvc.model.fields import MAX_ID_LENGTH
from pushsvc.model.target import MAX_USER_ID_LENGTH

routes = web.RouteTableDef()

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "invalid input (the error names the field)",
        401: "missing or unknown API key",
        403: "the API key lacks the scope, or may not act for the app named (field: app)",
        404: "not found",
        409: "not allowed in the current state",
        413: "body larger than http.max_body_bytes",
        503: "MongoDB unavailable, retry later",
    }
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


AUTHED = (400, 401, 403, 503)
WITH_BODY = (400, 401, 403, 413, 503)


def _op(
    summary: str,
    scope: str | None,
    responses: dict[str, Any],
    *,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-scope"] = scope
        operation["description"] = f"Needs an API key with scope `{scope}`."
    else:
        operation["security"] = []
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


APP_PATH = _path("app", APP)
TOKEN_PATH = _path("token", TOKEN)
USER_PATH = _path("user_id", {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LENGTH})
CAMPAIGN_PATH = _path("campaign_id", CAMPAIGN_ID_SCHEMA)
# Ids are unique within an app: a lookup by id names the app (optional when the key acts for one app).
APP_SCOPE = {
    **_query("app", APP),
    "description": "the app the request acts for; required unless the API key acts for exactly one app",
}
# App-wide routes: one app, or every app the API key may act for.
APP_FILTER = {
    **_query("app", APP),
    "description": "one app; without it, every app the API key may act for",
}
# A notification id is a request id.
NOTIFICATION_PATH = _path("notification_id", {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH})


def _campaign_action(summary: str) -> dict[str, Any]:
    return {
        "post": _op(
            summary,
            "campaigns",
            {"200": _json(_ref("Campaign"), "the campaign after the change"), **_errors(*AUTHED, 404, 409)},
            parameters=[CAMPAIGN_PATH, APP_SCOPE],
        )
    }


PATHS: dict[str, Any] = {
    "/healthz": {"get": _op("Liveness", None, {"200": _json({"type": "object"}, "alive")})},
    "/readyz": {
        "get": _op(
            "Readiness (MongoDB, Kafka, scheduler)",
            None,
            {"200": _json({"type": "object"}, "ready"), "503": _json({"type": "object"}, "not ready")},
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            None,
            {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/openapi.json": {"get": _op("This document", None, {"200": _json({"type": "object"}, "OpenAPI 3")})},
    "/asyncapi.json": {
        "get": _op(
            "The Kafka contract: requests, dead letters, outcome events",
            None,
            {"200": _json({"type": "object"}, "AsyncAPI 3 (schemas also in docs/contracts/)")},
        )
    },
    "/v1/devices": {
        "post": _op(
            "Register or refresh a device",
            "devices:write",
            {
                "200": _json(_ref("Device"), "existing device refreshed (and active again if it was deactivated)"),
                "201": _json(_ref("Device"), "new device"),
                **_errors(*WITH_BODY),
            },
            body="DeviceInput",
        )
    },
    "/v1/devices/{app}/{token}": {
        "patch": _op(
            "Replace a device's tags",
            "devices:write",
            {"200": _json(_ref("Device"), "updated"), **_errors(*WITH_BODY, 404)},
            body="DeviceTags",
            parameters=[APP_PATH, TOKEN_PATH],
        ),
        "delete": _op(
            "Delete a device",
            "devices:write",
            {"204": {"description": "deleted"}, **_errors(*AUTHED, 404)},
            parameters=[APP_PATH, TOKEN_PATH],
        ),
    },
    "/v1/users/{user_id}/devices": {
        "get": _op(
            "A user's devices",
            "read",
            {"200": _json(_ref("DeviceList"), "devices"), **_errors(*AUTHED)},
            parameters=[USER_PATH, APP_SCOPE],
        )
    },
    "/v1/users/{user_id}": {
        "delete": _op(
            "Erase a user (GDPR): delete all their devices",
            "devices:write",
            {"200": _json(_ref("Erasure"), "erased"), **_errors(*AUTHED)},
            parameters=[USER_PATH, APP_FILTER],
        )
    },
    "/v1/notifications": {
        "post": _op(
            "Send a notification (the Kafka request contract), idempotent by id",
            "notify",
            {
                "200": _json(_ref("Notification"), "id seen before with the same body: the existing record"),
                "201": _json(_ref("Notification"), "recorded"),
                **_errors(*WITH_BODY),
                "409": _json(_ref("Error"), "id seen before with a different body; `field` names the first field "
                             "that differs (e.g. message.title); the first request stands"),
            },
            body="NotificationRequest",
        )
    },
    "/v1/notifications/{notification_id}": {
        "get": _op(
            "State and counts of a notification",
            "read",
            {"200": _json(_ref("Notification"), "the notification"), **_errors(*AUTHED, 404)},
            parameters=[NOTIFICATION_PATH, APP_SCOPE],
        )
    },
    "/v1/notifications/{notification_id}/cancel": {
        "post": _op(
            "Cancel a notification: one not started is never sent, a fan-out in flight stops after its chunk",
            "campaigns",
            {
                "200": _json(_ref("Notification"), "cancelled"),
                **_errors(*AUTHED, 404),
                "409": _json(_ref("Error"), "already finished (the message names its state), or a notification "
                             "of a few devices already being sent (one chunk)"),
            },
            parameters=[NOTIFICATION_PATH, APP_SCOPE],
        )
    },
    "/v1/campaigns": {
        "post": _op(
            "Create a campaign",
            "campaigns",
            {
                "200": _json(_ref("Campaign"), "id seen before with the same body: the existing campaign"),
                "201": _json(_ref("Campaign"), "created"),
                **_errors(*WITH_BODY),
                "409": _json(_ref("Error"), "id seen before with a different body (`field` names the first field "
                             "that differs), or taken by a notification that is not a campaign (field: id)"),
            },
            body="CampaignInput",
        ),
        "get": _op(
            "List campaigns, newest first",
            "read",
            {"200": _json(_ref("CampaignList"), "campaigns"), **_errors(*AUTHED)},
            parameters=[
                APP_FILTER,
                _query("status", {"type": "string", "enum": STATES}),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            ],
        ),
    },
    "/v1/campaigns/{campaign_id}": {
        "get": _op(
            "A campaign with its counts and progress",
            "read",
            {"200": _json(_ref("Campaign"), "the campaign"), **_errors(*AUTHED, 404)},
            parameters=[CAMPAIGN_PATH, APP_SCOPE],
        )
    },
    "/v1/campaigns/{campaign_id}/preview": {
        "get": _op(
            "Whom a campaign reaches now (per platform and per text) and what each platform's provider would get",
            "read",
            {
                "200": _json(_ref("CampaignPreview"), "the preview"),
                **_errors(*AUTHED, 404),
                "409": _json(_ref("Error"), "the stored campaign cannot be read by this version (the message says "
                             "why)"),
            },
            parameters=[CAMPAIGN_PATH, APP_SCOPE],
        )
    },
    "/v1/receipts": {
        "post": _op(
            "Report pushes devices received or users opened (a batch from the app's mobile backend), idempotent per "
            "(notification, device, event)",
            "receipts",
            {
                "200": _json(_ref("ReceiptResults"), "one outcome per item: recorded, duplicate (recorded before), "
                             "unknown_notification or unknown_device (counted and dropped, nothing stored)"),
                **_errors(*WITH_BODY),
            },
            body="ReceiptBatch",
        )
    },
    "/v1/campaigns/{campaign_id}/pause": _campaign_action("Pause after the chunk in flight"),
    "/v1/campaigns/{campaign_id}/resume": _campaign_action("Resume a paused campaign where it stopped"),
    "/v1/campaigns/{campaign_id}/cancel": _campaign_action("Cancel: nothing more is sent"),
}


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pushsvc",
            "version": __version__,
            "description": "Push-notification delivery: devices, notifications, campaigns, receipts.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "API key"}},
        },
        "security": [{"bearer": []}],
    }


@routes.get("/openapi.json")
async def openapi_json(_: web.Request) -> web.Response:
    return web.json_response(spec())
