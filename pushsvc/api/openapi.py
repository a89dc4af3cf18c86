"""The OpenAPI 3 description of every route, served at /openapi.json (a test keeps it in step with routes)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushsvc import __version__
from pushsvc.model import PLATFORMS, PUSH_TYPES
from pushsvc.store.notifications import COUNT_KEYS
from pushsvc.token_kinds import KIND_NAMES

routes = web.RouteTableDef()

TOKEN = {"type": "string", "pattern": r"^[A-Za-z0-9:_\-.]{8,4096}$", "minLength": 8, "maxLength": 4096}
LOCALE = {"type": "string", "pattern": r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", "maxLength": 35}
TAGS = {"type": "array", "maxItems": 50, "items": {"type": "string", "minLength": 1, "maxLength": 128}}
CAMPAIGN_ID = {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$", "minLength": 1, "maxLength": 64}
HHMM = {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$", "example": "22:00"}
NULLABLE_STRING = {"type": "string", "nullable": True}
STRING_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}


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


APP_PATH = _path("app", {"type": "string", "minLength": 1, "maxLength": 128})
TOKEN_PATH = _path("token", TOKEN)
USER_PATH = _path("user_id", {"type": "string", "minLength": 1, "maxLength": 256})
CAMPAIGN_PATH = _path("campaign_id", CAMPAIGN_ID)
# Ids are unique within an app: a lookup by id names the app (optional when the key acts for one app).
APP_SCOPE = {
    **_query("app", {"type": "string", "minLength": 1, "maxLength": 128}),
    "description": "the app the request acts for; required unless the API key acts for exactly one app",
}
# App-wide routes: one app, or every app the API key may act for.
APP_FILTER = {
    **_query("app", {"type": "string", "minLength": 1, "maxLength": 128}),
    "description": "one app; without it, every app the API key may act for",
}

MESSAGE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 1024},
        "body": {"type": "string", "minLength": 1, "maxLength": 4096},
        "data": {
            "type": "object",
            "maxProperties": 100,
            "description": "payload limits: each APNs body (per locale) within 4096 bytes (5120 for voip), and for FCM "
            "title + body + data keys and values within 4096 bytes (UTF-8); checked at intake, 400 names the field",
            "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
        },
        "badge": {"type": "integer", "minimum": 0, "maximum": 2147483647},
        "sound": {"type": "string", "minLength": 1, "maxLength": 256},
        "category": {"type": "string", "minLength": 1, "maxLength": 256},
        "thread_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "mutable_content": {"type": "boolean"},
        "live_activity": _ref("LiveActivity"),
        "localized": {
            "type": "object",
            "description": "per-locale variants: exact tag, then language, then the defaults; each variant within "
            "the payload limits (see data)",
            "maxProperties": 200,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "title": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "body": {"type": "string", "minLength": 1, "maxLength": 4096},
                },
            },
        },
    },
}
SEGMENT = {
    "type": "object",
    "additionalProperties": False,
    "description": "the app's active devices with any of tags_any and all of tags_all; at least one of them must "
    "be non-empty: an empty segment ({}) would reach every device of the app, so it is a 400 naming the segment",
    "properties": {"tags_any": {**TAGS}, "tags_all": {**TAGS}},
    "anyOf": [
        {"required": ["tags_any"], "properties": {"tags_any": {"minItems": 1}}},
        {"required": ["tags_all"], "properties": {"tags_all": {"minItems": 1}}},
    ],
}
BASE_OPTIONS = {
    "priority": {"type": "string", "enum": ["high", "normal"]},
    "ttl_seconds": {"type": "integer", "minimum": 0, "maximum": 2419200},
    "collapse_key": {"type": "string", "minLength": 1, "maxLength": 64},
    "push_type": {
        "type": "string",
        "enum": list(PUSH_TYPES),
        "description": "alert: apns, fcm, hms and webpush tokens; background: apns, fcm and hms; voip: apns_voip, fcm "
        "and hms tokens; "
        "liveactivity (with message.live_activity): an update or end to apns_liveactivity tokens (of "
        "live_activity.activity_id when the target is users or a segment), a start to apns_pushtostart tokens",
    },
    "dry_run": {
        "type": "boolean",
        "description": "build and check every targeted device's payload without delivering it (FCM: validate_only; "
        "APNs, HMS and Web Push are not called); counts come back as validated/rejected, also per platform",
    },
}
# A subscription as the browser's PushSubscription.toJSON() gives it.
SUBSCRIPTION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["endpoint", "keys"],
    "properties": {
        "endpoint": {
            "type": "string",
            "maxLength": 2048,
            "description": "the push service URL: https, and never an address on this machine or an internal "
            "network (unless the app's webpush.allowed_hosts lists its host)",
        },
        "expirationTime": {"type": "number", "nullable": True, "description": "accepted and ignored"},
        "keys": {
            "type": "object",
            "additionalProperties": False,
            "required": ["p256dh", "auth"],
            "properties": {
                "p256dh": {"type": "string", "description": "base64url, the 65-byte uncompressed P-256 key"},
                "auth": {"type": "string", "description": "base64url, the 16-byte authentication secret"},
            },
        },
    },
}
EPOCH = {"type": "integer", "minimum": 946684800, "maximum": 4102444799, "description": "epoch seconds"}
JSON_OBJECT = {"type": "object", "additionalProperties": True}
COUNT_DESCRIPTIONS = {
    "targeted": "devices reached by the target that have a final count (each is in exactly one of the others)",
    "unknown_token": "tokens named in target.tokens with no active device of a kind the push type takes",
    "opted_out": "devices named by target.tokens whose opt_out lists message.category, not sent to. A users or "
    "segment audience leaves such devices out when it is read: they are in neither targeted nor opted_out",
    "validated": "a dry run's devices whose payload was built and accepted",
    "pending": "targeted devices without a final count yet",
}
COUNTS = {
    "type": "object",
    "required": [*COUNT_KEYS, "pending"],
    "properties": {
        k: {"type": "integer", "minimum": 0, **({"description": text} if (text := COUNT_DESCRIPTIONS.get(k)) else {})}
        for k in (*COUNT_KEYS, "pending")
    },
}
DRY_RUN = {
    "type": "object",
    "nullable": True,
    "description": "a dry run's final outcomes per device platform (null for a real send)",
    "required": ["by_platform"],
    "properties": {
        "by_platform": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        }
    },
}
STATES = ["accepted", "scheduled", "dispatching", "paused", "done", "failed", "cancelled"]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
            }
        },
    },
    "DeviceInput": {
        "type": "object",
        "additionalProperties": False,
        "required": ["app", "platform"],
        "properties": {
            "app": {"type": "string", "minLength": 1, "maxLength": 128},
            "token": {
                **TOKEN,
                "description": "required, except for a web device: then it defaults to 'web:' and a hash of the "
                "subscription's endpoint (the response shows it)",
            },
            "platform": {"type": "string", "enum": list(PLATFORMS)},
            "kind": {
                "type": "string",
                "enum": list(KIND_NAMES),
                "description": "what the token is for: apns (regular APNs token), apns_voip (PushKit token), "
                "apns_liveactivity (a Live Activity's update token; needs activity_id), apns_pushtostart (a "
                "push-to-start token) on ios; fcm on android; hms on huawei; webpush on web. Default: the "
                "platform's (ios -> apns, android -> fcm, huawei -> hms, web -> webpush). See push_type for which "
                "pushes reach which kinds.",
            },
            "subscription": {**SUBSCRIPTION, "description": "required for platform web, refused for the others"},
            "activity_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "kind apns_liveactivity only (required): the activity the update token belongs to",
            },
            "user_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "tags": TAGS,
            "locale": LOCALE,
            "timezone": {"type": "string", "minLength": 1, "maxLength": 64, "description": "IANA name"},
            "app_version": {"type": "string", "minLength": 1, "maxLength": 64},
            "opt_out": {**TAGS, "description": "message categories the user opted out of"},
        },
    },
    "DeviceTags": {
        "type": "object",
        "additionalProperties": False,
        "required": ["tags"],
        "properties": {"tags": TAGS},
    },
    "Device": {
        "type": "object",
        # Every field is always present (null where unset).
        "required": [
            "id", "app", "token", "platform", "kind", "user_id", "tags", "locale", "timezone", "app_version",
            "opt_out", "subscription", "activity_id", "active", "deactivated_reason", "registered_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "app": {"type": "string"},
            "token": {"type": "string"},
            "platform": {"type": "string", "enum": list(PLATFORMS)},
            "kind": {"type": "string", "enum": list(KIND_NAMES)},
            "user_id": NULLABLE_STRING,
            "tags": STRING_LIST,
            "locale": NULLABLE_STRING,
            "timezone": NULLABLE_STRING,
            "app_version": NULLABLE_STRING,
            "opt_out": STRING_LIST,
            "subscription": {**SUBSCRIPTION, "nullable": True},
            "activity_id": NULLABLE_STRING,
            "active": {
                "type": "boolean",
                "description": "false once a provider called the token dead (deactivated_reason says why): it is "
                "no longer sent to. Registering the same token again makes it active again",
            },
            "deactivated_reason": {**NULLABLE_STRING, "description": "the provider's reason; null while active"},
            "registered_at": {
                "type": "number",
                "nullable": True,
                "description": "epoch seconds of the last registration (null: registered before it was recorded)",
            },
        },
    },
    "DeviceList": {
        "type": "object",
        "required": ["devices"],
        "properties": {"devices": {"type": "array", "items": _ref("Device")}},
    },
    "Erasure": {
        "type": "object",
        "required": ["user_id", "deleted_devices", "scrubbed_notifications"],
        "properties": {
            "user_id": {"type": "string"},
            "deleted_devices": {"type": "integer", "minimum": 0},
            # Stored notification requests that named the user or one of their tokens (now placeholders).
            "scrubbed_notifications": {"type": "integer", "minimum": 0},
        },
    },
    "Message": MESSAGE,
    "LiveActivity": {
        "type": "object",
        "additionalProperties": False,
        "required": ["event"],
        "description": "an APNs Live Activity push (options.push_type liveactivity, iOS tokens only). title, body "
        "and sound of the message become its alert (a start needs title or body; a sound needs one of them); data, "
        "badge, category, thread_id and mutable_content are refused",
        "properties": {
            "event": {"type": "string", "enum": ["start", "update", "end"]},
            "content_state": {**JSON_OBJECT, "nullable": True, "description": "the activity's ContentState; "
                              "required for start and update; an end without it leaves the last state shown"},
            "timestamp": {**EPOCH, "description": "when the state was current (default: when the request was "
                          "accepted, stored with it)"},
            "activity_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "update/end: only update tokens registered with this activity id (needed with a "
                "users or segment target)",
            },
            "stale_date": EPOCH,
            "dismissal_date": {**EPOCH, "description": "end only"},
            "relevance_score": {"type": "number"},
            "attributes_type": {"type": "string", "minLength": 1, "maxLength": 256, "description": "start only "
                                "(required): the ActivityAttributes type name"},
            "attributes": {**JSON_OBJECT, "description": "start only (required): the activity's attributes"},
        },
    },
    "NotificationRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "app", "target", "message"],
        "properties": {
            "id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "not": {"pattern": "^campaign:"},
                "description": "idempotency key, unique within the app; the prefix 'campaign:' is reserved",
            },
            "app": {"type": "string", "minLength": 1, "maxLength": 128},
            "target": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "tokens": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1000,
                        "items": {"type": "string", "minLength": 1, "maxLength": 4096},
                    },
                    "users": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10000,
                        "items": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                    "segment": SEGMENT,
                },
            },
            "message": _ref("Message"),
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **BASE_OPTIONS,
                    "send_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "from 2000-01-01 to before 2100-01-01 (UTC)",
                    },
                    "local_time": {"type": "boolean"},
                },
            },
        },
    },
    "Notification": {
        "type": "object",
        # Every field is always present (null where unset).
        "required": [
            "id", "app", "state", "source", "created_at", "due_at", "finished_at", "error", "counts", "dry_run",
        ],
        "properties": {
            "id": {"type": "string"},
            "app": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "source": NULLABLE_STRING,
            "created_at": {"type": "string", "format": "date-time"},
            "due_at": {"type": "string", "format": "date-time"},
            "finished_at": {**NULLABLE_STRING, "format": "date-time"},
            "error": NULLABLE_STRING,
            "counts": COUNTS,
            "dry_run": DRY_RUN,
        },
    },
    "CampaignInput": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "app", "audience", "message"],
        "properties": {
            "id": {**CAMPAIGN_ID, "description": "optional; repeating an id returns the existing campaign"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "app": {"type": "string", "minLength": 1, "maxLength": 128},
            "audience": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "users": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10000,
                        "items": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                    "segment": SEGMENT,
                },
            },
            "message": _ref("Message"),
            "options": {"type": "object", "additionalProperties": False, "properties": BASE_OPTIONS},
            "schedule": {
                "type": "object",
                "additionalProperties": False,
                "required": ["at"],
                "properties": {
                    "at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "with an offset, or a wall-clock time when local_time is true",
                    },
                    "local_time": {"type": "boolean"},
                },
            },
            "quiet_hours": {
                "type": "object",
                "additionalProperties": False,
                "required": ["start", "end"],
                "description": "device-local; deliveries to devices inside it wait until it ends",
                "properties": {"start": HHMM, "end": HHMM},
            },
            "throttle_per_second": {"type": "integer", "minimum": 1, "maximum": 100000},
        },
    },
    "Campaign": {
        "type": "object",
        # Every field is always present (null where unset), except preview.
        "required": [
            "id", "name", "app", "status", "audience", "message", "options", "schedule", "quiet_hours",
            "throttle_per_second", "created_at", "next_run_at", "finished_at", "counts", "dry_run", "progress",
        ],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "app": {"type": "string"},
            "status": {"type": "string", "enum": STATES},
            "audience": {"type": "object", "description": "as created"},
            "message": {"type": "object", "description": "as created"},
            "options": {"type": "object", "description": "as created"},
            "schedule": {
                "type": "object",
                "nullable": True,
                "required": ["at", "local_time"],
                "properties": {"at": {"type": "string"}, "local_time": {"type": "boolean"}},
            },
            "quiet_hours": {
                "type": "object",
                "nullable": True,
                "required": ["start", "end"],
                "properties": {"start": HHMM, "end": HHMM},
            },
            "throttle_per_second": {"type": "integer", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"},
            "next_run_at": {"type": "string", "format": "date-time"},
            "finished_at": {**NULLABLE_STRING, "format": "date-time"},
            "counts": COUNTS,
            "dry_run": DRY_RUN,
            "preview": {
                "type": "object",
                "description": "a dry run's answer to its creation only: the audience and the payload per platform "
                "and locale",
                "required": ["audience", "payloads"],
                "properties": {
                    "audience": {"type": "integer", "minimum": 0, "description": "active devices it targets"},
                    "payloads": {
                        "type": "object",
                        "description": "{platform: {locale or 'default': {headers, body} or {rejected: reason}}}: "
                        "the provider request each would get (no credentials, before Web Push encryption)",
                        "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}},
                    },
                },
            },
            "progress": {
                "type": "object",
                "required": ["audience_estimate", "ratio"],
                "properties": {
                    "audience_estimate": {"type": "integer", "minimum": 0},
                    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
        },
    },
    "CampaignList": {
        "type": "object",
        "required": ["campaigns"],
        "properties": {"campaigns": {"type": "array", "items": _ref("Campaign")}},
    },
}


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
            parameters=[_path("notification_id", {"type": "string", "minLength": 1, "maxLength": 128}), APP_SCOPE],
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
            parameters=[_path("notification_id", {"type": "string", "minLength": 1, "maxLength": 128}), APP_SCOPE],
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
            "description": "Push-notification delivery: devices, notifications, campaigns.",
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
