"""The OpenAPI components: what pushsvc answers (devices, notifications, campaigns, errors) and, from
openapi_inputs, what callers send. tests/integration/test_openapi_responses.py checks every answer against
these schemas."""

from __future__ import annotations

from typing import Any

from pushsvc.api.openapi_inputs import HHMM, INPUT_SCHEMAS, SUBSCRIPTION
from pushsvc.metrics import RECEIPT_OUTCOMES
from pushsvc.model import PLATFORMS
from pushsvc.store.campaigns import STATUSES
from pushsvc.store.counts import COUNT_KEYS
from pushsvc.token_kinds import KIND_NAMES

NULLABLE_STRING = {"type": "string", "nullable": True}
STRING_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}
# A notification's (and a campaign's) state: NotificationState, and paused for a campaign.
STATES = list(STATUSES)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


COUNT_DESCRIPTIONS = {
    "targeted": "devices reached by the target that have a final count (each is in exactly one of the others)",
    "unknown_token": "tokens named in target.tokens with no active device of a kind the push type takes",
    "opted_out": "devices named by target.tokens whose opt_out lists message.category, not sent to. A users or "
    "segment audience leaves such devices out when it is read: they are in neither targeted nor opted_out",
    "validated": "a dry run's devices whose payload was built and accepted",
    "control": "a campaign's devices in its control group (control_percent): counted, never sent",
    "capped": "devices not sent to because their user had had as many capped pushes as the app's frequency caps "
    "allow (README: Campaigns)",
    "expired": "devices not sent to because the notification, or its wave (local time, quiet hours), would have "
    "gone out more than options.ttl_seconds (at least 30 s) after it was due",
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

_RATE = {"type": "number", "nullable": True, "minimum": 0}
# store/funnel.py funnel_view.
FUNNEL = {
    "type": "object",
    "description": "targeted -> sent (a provider was asked) -> delivered -> received -> opened (receipts, POST "
    "/v1/receipts); each rate is a stage over the one before (null when that is 0), open_rate is opened over "
    "delivered. `by`: receipts per dimension (platform, locale: the device locale's language, 'other' or "
    "'mixed') and value",
    "required": ["targeted", "sent", "delivered", "received", "opened", "rates", "by"],
    "properties": {
        **{k: {"type": "integer", "minimum": 0} for k in ("targeted", "sent", "delivered", "received", "opened")},
        "rates": {
            "type": "object",
            "required": ["sent", "delivered", "received", "opened", "open_rate"],
            "properties": {k: _RATE for k in ("sent", "delivered", "received", "opened", "open_rate")},
        },
        "by": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["received", "opened", "open_rate"],
                    "properties": {
                        "received": {"type": "integer", "minimum": 0},
                        "opened": {"type": "integer", "minimum": 0},
                        "open_rate": {**_RATE, "description": "opened over received"},
                    },
                },
            },
        },
    },
}
RECEIPT_RESULTS = {
    "type": "object",
    "required": ["app", "results", "counts"],
    "properties": {
        "app": {"type": "string"},
        "results": {
            "type": "array",
            "description": "one outcome per item, in order",
            "items": {"type": "string", "enum": list(RECEIPT_OUTCOMES)},
        },
        "counts": {
            "type": "object",
            "required": list(RECEIPT_OUTCOMES),
            "properties": {k: {"type": "integer", "minimum": 0} for k in RECEIPT_OUTCOMES},
        },
    },
}

PAYLOADS = {
    "type": "object",
    "description": "{platform: {locale or 'default': {headers, body} or {rejected: reason}}}: the provider request "
    "each would get (no credentials, before Web Push encryption)",
    "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}},
}
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
    **INPUT_SCHEMAS,
    "Notification": {
        "type": "object",
        # Every field is always present (null where unset).
        "required": [
            "id", "app", "state", "source", "created_at", "due_at", "finished_at", "error", "counts", "dry_run",
            "funnel",
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
            "funnel": _ref("Funnel"),
        },
    },
    "Campaign": {
        "type": "object",
        # Every field is always present (null where unset), except preview.
        "required": [
            "id", "name", "app", "status", "audience", "message", "options", "schedule", "quiet_hours",
            "throttle_per_second", "created_at", "next_run_at", "finished_at", "counts", "dry_run", "progress",
            "variants", "control_percent", "variant_counts", "funnel",
        ],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "app": {"type": "string"},
            "status": {"type": "string", "enum": STATES},
            "audience": {"type": "object", "description": "as created"},
            "message": {"type": "object", "nullable": True, "description": "as created (null: see variants)"},
            "options": {"type": "object", "description": "as created"},
            "schedule": {
                "type": "object",
                "nullable": True,
                "required": ["at", "local_time", "zones_passed", "best_time"],
                "properties": {
                    "at": {"type": "string"},
                    "local_time": {"type": "boolean"},
                    "best_time": {
                        "type": "object",
                        "nullable": True,
                        "required": ["window_hours"],
                        "properties": {"window_hours": {"type": "integer"}},
                        "description": "as created: each user is sent in their best hour within the window, "
                        "users without one at `at` (null: everyone at `at`)",
                    },
                    "zones_passed": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "local time: the timezones where `at` had already passed when the campaign "
                        "was created; their devices are not sent to (0 otherwise)",
                    },
                },
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
            "funnel": _ref("Funnel"),
            "preview": {
                "type": "object",
                "description": "a dry run's answer to its creation only: the audience and the payload per platform "
                "and locale",
                "required": ["audience", "payloads"],
                "properties": {
                    "audience": {"type": "integer", "minimum": 0, "description": "active devices it targets"},
                    "payloads": PAYLOADS,
                },
            },
            "variants": {
                "type": "array",
                "nullable": True,
                "description": "as created: name, weight, message",
                "items": {"type": "object"},
            },
            "control_percent": {"type": "number", "nullable": True},
            "variant_counts": {
                "type": "object",
                "nullable": True,
                "description": "with variants or a control group: targeted, every final outcome and pending per "
                "variant; 'control' is the control group (counted control, never sent), 'default' everyone else "
                "when there are no variants",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
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
    "CampaignPreview": {
        "type": "object",
        "required": ["id", "app", "audience", "payloads", "variants"],
        "properties": {
            "id": {"type": "string"},
            "app": {"type": "string"},
            "audience": {
                "type": "object",
                "description": "active devices it reaches now (opted-out devices left out); a text is the "
                "message.localized locale a device gets from its own locale, or 'default'",
                "required": ["total", "by_platform", "by_locale", "by_platform_and_locale"],
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "by_platform": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "by_locale": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "by_platform_and_locale": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object", "additionalProperties": {"type": "integer", "minimum": 0}
                        },
                    },
                },
            },
            "payloads": PAYLOADS,
            "variants": {
                "type": "object",
                "nullable": True,
                "description": "a campaign with variants: each variant's payloads (`payloads` is the first's); the "
                "audience counts every device, the control group's included",
                "additionalProperties": PAYLOADS,
            },
        },
    },
    "Funnel": FUNNEL,
    "ReceiptResults": RECEIPT_RESULTS,
    "CampaignList": {
        "type": "object",
        "required": ["campaigns"],
        "properties": {"campaigns": {"type": "array", "items": _ref("Campaign")}},
    },
}

