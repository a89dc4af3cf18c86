"""The OpenAPI schemas of what callers send: a notification request (the Kafka contract too), a campaign, a
device registration.

Each fact a validator enforces is taken from the constant it enforces: the keys of every object (`closed`
refuses, at import, a schema whose keys differ from its validator's), the enums, the length and count limits,
the patterns. tests/unit/test_openapi_contract.py checks the other way round, by asking the validators: every
key a schema lists is accepted and one it does not is refused naming the field; every enum value is accepted
and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from pushsvc.device_contract import DEVICE_FIELDS, LOCALE_PATTERN, TOKEN_PATTERN
from pushsvc.ingest.campaigns import BEST_TIME_FIELDS, CAMPAIGN_FIELDS, CAMPAIGN_ID, MAX_THROTTLE, SCHEDULE_FIELDS
from pushsvc.ingest.campaigns import OPTION_FIELDS as CAMPAIGN_OPTION_FIELDS
from pushsvc.ingest.receipts import BATCH_FIELDS, CLOCK_SKEW_SECONDS, EVENTS, MAX_RECEIPTS, RECEIPT_FIELDS
from pushsvc.model import PLATFORMS
from pushsvc.model.fields import MAX_ID_LENGTH
from pushsvc.model.live_activity import (
    EPOCH_MAX,
    EPOCH_MIN,
    LIVE_ACTIVITY_EVENTS,
    LIVE_ACTIVITY_FIELDS,
    MAX_ATTRIBUTES_TYPE_LENGTH,
    MAX_RELEVANCE_SCORE,
)
from pushsvc.model.message import (
    LOCALIZED_FIELDS,
    MAX_BADGE,
    MAX_DATA_KEYS,
    MAX_LOCALE_LENGTH,
    MAX_LOCALIZED,
    MESSAGE_FIELDS,
    NOT_FOR_LIVE_ACTIVITY,
    TEXT_LIMITS,
)
from pushsvc.model.options import (
    COLLAPSE_KEY,
    MAX_COLLAPSE_KEY_BYTES,
    MAX_TTL_SECONDS,
    OPTION_FIELDS,
    PRIORITIES,
    PUSH_TYPES,
    SEND_AT_MAX,
    SEND_AT_MIN,
)
from pushsvc.model.request import MAX_APP_LENGTH, REQUEST_FIELDS, REQUIRED_FIELDS
from pushsvc.model.target import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TOKEN_LENGTH,
    MAX_TOKENS_PER_REQUEST,
    MAX_USER_ID_LENGTH,
    MAX_USERS_PER_REQUEST,
    SEGMENT_FIELDS,
    TARGET_KINDS,
)
from pushsvc.model.variants import CONTROL, MAX_CONTROL_PERCENT, MAX_VARIANTS, MAX_WEIGHT, VARIANT_FIELDS, VARIANT_NAME
from pushsvc.scheduling.best_time import MAX_WINDOW_HOURS, MIN_WINDOW_HOURS
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.subscriptions import MAX_ENDPOINT_LENGTH
from pushsvc.token_kinds import KIND_NAMES, kinds_for_push_type

TOKEN = {"type": "string", "pattern": TOKEN_PATTERN.pattern, "minLength": 8, "maxLength": 4096}
LOCALE = {"type": "string", "pattern": LOCALE_PATTERN.pattern, "maxLength": 35}
TAGS = {"type": "array", "maxItems": MAX_TAGS, "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH}}
CAMPAIGN_ID_SCHEMA = {"type": "string", "pattern": CAMPAIGN_ID.pattern, "minLength": 1, "maxLength": 64}
HHMM = {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$", "example": "22:00"}
APP = {"type": "string", "minLength": 1, "maxLength": MAX_APP_LENGTH}
EPOCH = {"type": "integer", "minimum": EPOCH_MIN, "maximum": EPOCH_MAX - 1, "description": "epoch seconds"}
JSON_OBJECT = {"type": "object", "additionalProperties": True}


def closed(properties: dict[str, Any], allowed: Collection[str], **schema: Any) -> dict[str, Any]:
    """An object schema with exactly the keys its validator allows (`allowed`, the validator's own set)."""
    if set(properties) != set(allowed):
        raise RuntimeError(f"schema keys {sorted(properties)} differ from the validator's {sorted(allowed)}")
    return {"type": "object", "additionalProperties": False, **schema, "properties": properties}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limit}


def _strings(max_items: int, max_length: int) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": max_items, "items": _text(max_length)}


def _and(names: Collection[str]) -> str:
    *rest, last = names
    return f"{', '.join(rest)} and {last}" if rest else last


MESSAGE = closed(
    {
        "title": _text(TEXT_LIMITS["title"]),
        "body": _text(TEXT_LIMITS["body"]),
        "data": {
            "type": "object",
            "maxProperties": MAX_DATA_KEYS,
            "description": "payload limits: each APNs body (per locale) within 4096 bytes (5120 for voip), and for FCM "
            "title + body + data keys and values within 4096 bytes (UTF-8); checked at intake, 400 names the field",
            "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
        },
        "badge": {"type": "integer", "minimum": 0, "maximum": MAX_BADGE},
        "sound": _text(TEXT_LIMITS["sound"]),
        "category": _text(TEXT_LIMITS["category"]),
        "thread_id": _text(TEXT_LIMITS["thread_id"]),
        "mutable_content": {"type": "boolean"},
        "live_activity": _ref("LiveActivity"),
        "localized": {
            "type": "object",
            "description": "per-locale variants, keyed by a BCP 47 tag of 1 to "
            f"{MAX_LOCALE_LENGTH} characters: exact tag, then language, then the defaults; each variant within "
            "the payload limits (see data)",
            "maxProperties": MAX_LOCALIZED,
            "additionalProperties": closed(
                {name: _text(TEXT_LIMITS[name]) for name in LOCALIZED_FIELDS}, LOCALIZED_FIELDS
            ),
        },
    },
    MESSAGE_FIELDS,
)
LIVE_ACTIVITY = closed(
    {
        "event": {"type": "string", "enum": list(LIVE_ACTIVITY_EVENTS)},
        "content_state": {**JSON_OBJECT, "nullable": True, "description": "the activity's ContentState; "
                          "required for start and update; an end without it leaves the last state shown"},
        "timestamp": {**EPOCH, "description": "when the state was current (default: when the request was "
                      "accepted, stored with it)"},
        "activity_id": {
            **_text(MAX_ID_LENGTH),
            "description": "update/end: only update tokens registered with this activity id (needed with a "
            "users or segment target)",
        },
        "stale_date": EPOCH,
        "dismissal_date": {**EPOCH, "description": "end only"},
        "relevance_score": {
            "type": "number", "minimum": -MAX_RELEVANCE_SCORE, "maximum": MAX_RELEVANCE_SCORE,
            "description": "the activity's order among the app's others (higher first)",
        },
        "attributes_type": {**_text(MAX_ATTRIBUTES_TYPE_LENGTH), "description": "start only "
                            "(required): the ActivityAttributes type name"},
        "attributes": {**JSON_OBJECT, "description": "start only (required): the activity's attributes"},
    },
    LIVE_ACTIVITY_FIELDS,
    required=["event"],
    description="an APNs Live Activity push (options.push_type liveactivity, iOS tokens only). title, body "
    "and sound of the message become its alert (a start needs title or body; a sound needs one of them); "
    f"{_and(NOT_FOR_LIVE_ACTIVITY)} are refused",
)
SEGMENT = closed(
    {key: {**TAGS} for key in SEGMENT_FIELDS},
    SEGMENT_FIELDS,
    description="the app's active devices with any of tags_any and all of tags_all; at least one of them must "
    "be non-empty: an empty segment ({}) would reach every device of the app, so it is a 400 naming the segment",
    anyOf=[{"required": [key], "properties": {key: {"minItems": 1}}} for key in SEGMENT_FIELDS],
)
TARGET_PROPERTIES = {
    "tokens": _strings(MAX_TOKENS_PER_REQUEST, MAX_TOKEN_LENGTH),
    "users": _strings(MAX_USERS_PER_REQUEST, MAX_USER_ID_LENGTH),
    "segment": SEGMENT,
}
# A push type's tokens, as token_kinds routes them.
_KINDS_OF = {push_type: _and(kinds_for_push_type(push_type)) for push_type in PUSH_TYPES}
OPTIONS_PROPERTIES = {
    "priority": {"type": "string", "enum": list(PRIORITIES)},
    "ttl_seconds": {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_TTL_SECONDS,
        "description": "the provider keeps the push this long from its send (each wave's); a push or wave that would "
        "go out later than this (at least 30 s) after it was due is counted expired, not sent",
    },
    "collapse_key": {
        **_text(MAX_COLLAPSE_KEY_BYTES),
        "pattern": COLLAPSE_KEY.pattern,
        "description": f"at most {MAX_COLLAPSE_KEY_BYTES} bytes in UTF-8 (apns-collapse-id's limit); sent as an HTTP "
        "header value, so no control characters and no space at either end",
    },
    "push_type": {
        "type": "string",
        "enum": list(PUSH_TYPES),
        "description": f"alert: {_KINDS_OF['alert']} tokens; background: {_KINDS_OF['background']}; voip: "
        f"{_KINDS_OF['voip']} tokens; liveactivity (with message.live_activity): an update or end to "
        f"{_KINDS_OF['liveactivity']} tokens (of live_activity.activity_id when the target is users or a segment), "
        f"a start to {_and(kinds_for_push_type('liveactivity_start'))} tokens",
    },
    "send_at": {
        "type": "string",
        "format": "date-time",
        "description": f"from {SEND_AT_MIN:%Y-%m-%d} to before {SEND_AT_MAX:%Y-%m-%d} (UTC)",
    },
    "local_time": {"type": "boolean"},
    "dry_run": {
        "type": "boolean",
        "description": "build and check every targeted device's payload without delivering it (FCM: validate_only; "
        "APNs, HMS and Web Push are not called); counts come back as validated/rejected, also per platform",
    },
}
NOTIFICATION_REQUEST = closed(
    {
        "id": {
            **_text(MAX_ID_LENGTH),
            "not": {"pattern": f"^{re.escape(CAMPAIGN_PREFIX)}"},
            "description": f"idempotency key, unique within the app; the prefix '{CAMPAIGN_PREFIX}' is reserved",
        },
        "app": APP,
        "target": closed(TARGET_PROPERTIES, TARGET_KINDS, minProperties=1, maxProperties=1),
        "message": _ref("Message"),
        "options": closed(OPTIONS_PROPERTIES, OPTION_FIELDS),
    },
    REQUEST_FIELDS,
    required=list(REQUIRED_FIELDS),
)
# A campaign's audience is a request's target of users or a segment; its timing is `schedule`, not options.
AUDIENCE_KINDS = ("users", "segment")
CAMPAIGN_INPUT = closed(
    {
        "id": {**CAMPAIGN_ID_SCHEMA, "description": "optional; repeating an id returns the existing campaign"},
        "name": _text(200),
        "app": APP,
        "audience": closed(
            {kind: TARGET_PROPERTIES[kind] for kind in AUDIENCE_KINDS}, AUDIENCE_KINDS, minProperties=1, maxProperties=1
        ),
        "message": _ref("Message"),
        "options": closed(
            {k: v for k, v in OPTIONS_PROPERTIES.items() if k in CAMPAIGN_OPTION_FIELDS}, CAMPAIGN_OPTION_FIELDS
        ),
        "schedule": closed(
            {
                "at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "with an offset, or a wall-clock time when local_time is true; not in the "
                    "past (a minute's grace) for a new campaign: a local-time one is sent only to the zones where it "
                    "is still ahead (the answer's schedule.zones_passed counts those left out)",
                },
                "local_time": {"type": "boolean"},
                "best_time": closed(
                    {
                        "window_hours": {
                            "type": "integer",
                            "minimum": MIN_WINDOW_HOURS,
                            "maximum": MAX_WINDOW_HOURS,
                            "description": "each user is sent at the first occurrence, from `at` on and within "
                            "this many hours, of the UTC hour of day they opened pushes most in the 30 days before "
                            "`at` (from opened receipts recorded 5 minutes before it; ties: the earliest hour); "
                            "users without such an hour at `at`; each device judged by its user at `at`, so it is "
                            "sent once",
                        }
                    },
                    BEST_TIME_FIELDS,
                    required=["window_hours"],
                    nullable=True,
                    description="best-time delivery; not with local_time or quiet_hours (400 naming "
                    "schedule.best_time)",
                ),
            },
            SCHEDULE_FIELDS,
            required=["at"],
        ),
        "quiet_hours": closed(
            {"start": HHMM, "end": HHMM},
            ("start", "end"),
            required=["start", "end"],
            description="device-local; deliveries to devices inside it wait until it ends",
        ),
        "throttle_per_second": {"type": "integer", "minimum": 1, "maximum": MAX_THROTTLE},
        "variants": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_VARIANTS,
            "description": "A/B test: each user (a device without one: its token) gets one variant, by weight, the "
            "same one on every replica and after a restart (a hash of the campaign id and the user); instead of "
            "message",
            "items": closed(
                {
                    "name": {"type": "string", "pattern": VARIANT_NAME.pattern, "not": {"enum": [CONTROL]}},
                    "weight": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT, "default": 1},
                    "message": _ref("Message"),
                },
                VARIANT_FIELDS,
                required=["name", "message"],
            ),
        },
        "control_percent": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_CONTROL_PERCENT,
            "description": "the share of users held out as the control group: counted (counts.control, "
            "variants.control), never sent",
        },
    },
    CAMPAIGN_FIELDS,
    required=["name", "app", "audience"],
    oneOf=[{"required": ["message"]}, {"required": ["variants"]}],
)
# A subscription as the browser's PushSubscription.toJSON() gives it.
SUBSCRIPTION = closed(
    {
        "endpoint": {
            "type": "string",
            "maxLength": MAX_ENDPOINT_LENGTH,
            "description": "the push service URL: https, and never an address on this machine or an internal "
            "network (unless the app's webpush.allowed_hosts lists its host)",
        },
        "expirationTime": {"type": "number", "nullable": True, "description": "accepted and ignored"},
        "keys": closed(
            {
                "p256dh": {"type": "string", "description": "base64url, the 65-byte uncompressed P-256 key"},
                "auth": {"type": "string", "description": "base64url, the 16-byte authentication secret"},
            },
            ("p256dh", "auth"),
            required=["p256dh", "auth"],
        ),
    },
    ("endpoint", "expirationTime", "keys"),
    required=["endpoint", "keys"],
)
DEVICE_INPUT = closed(
    {
        "app": APP,
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
            **_text(MAX_ID_LENGTH),
            "description": "kind apns_liveactivity only (required): the activity the update token belongs to",
        },
        "user_id": _text(256),
        "tags": TAGS,
        "locale": LOCALE,
        "timezone": {**_text(64), "description": "IANA name"},
        "app_version": _text(64),
        "opt_out": {**TAGS, "description": "message categories the user opted out of"},
    },
    DEVICE_FIELDS,
    required=["app", "platform"],
)
DEVICE_TAGS = closed({"tags": TAGS}, ("tags",), required=["tags"])
RECEIPT = closed(
    {
        "notification_id": {**_text(MAX_ID_LENGTH), "description": "the request id the push carried (for a "
                            f"campaign '{CAMPAIGN_PREFIX}<id>'), within the batch's app"},
        "token": {**_text(MAX_TOKEN_LENGTH), "description": "the device's token (exactly one of token or user_id)"},
        "user_id": {**_text(MAX_USER_ID_LENGTH), "description": "the user (counted once per user, whichever of "
                    "their devices)"},
        "event": {"type": "string", "enum": list(EVENTS), "description": "opened also records received"},
        "at": {"type": "string", "format": "date-time", "description": "when it happened on the device, with an "
               f"offset; at most {CLOCK_SKEW_SECONDS:.0f} s in the future or before the notification was created"},
    },
    RECEIPT_FIELDS,
    required=["notification_id", "event", "at"],
    oneOf=[{"required": ["token"]}, {"required": ["user_id"]}],
)
RECEIPT_BATCH = closed(
    {"app": APP, "receipts": {"type": "array", "minItems": 1, "maxItems": MAX_RECEIPTS, "items": RECEIPT}},
    BATCH_FIELDS,
    required=list(BATCH_FIELDS),
    description="validated whole: a bad item is a 400 naming it (receipts[3].event) and nothing is recorded",
)

INPUT_SCHEMAS: dict[str, Any] = {
    "DeviceInput": DEVICE_INPUT,
    "DeviceTags": DEVICE_TAGS,
    "Message": MESSAGE,
    "LiveActivity": LIVE_ACTIVITY,
    "NotificationRequest": NOTIFICATION_REQUEST,
    "CampaignInput": CAMPAIGN_INPUT,
    "ReceiptBatch": RECEIPT_BATCH,
}
