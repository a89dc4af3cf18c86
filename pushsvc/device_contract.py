"""The device contract: what a registration may hold (`POST /v1/devices`, `pushsvc devices import`) and the
record a device is, as registered and as stored.

Beside the request contract (pushsvc/model) and for the same reason: the HTTP API and the import CLI take
the same registration, so both validate it here and neither imports the other. Validation is strict like the
request contract's: unknown fields are rejected and every failure is a RequestError naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pushsvc.model import MAX_ID_LENGTH, PLATFORMS, RequestError, WebSubscription
from pushsvc.model.fields import field_name
from pushsvc.model.timezones import is_known_timezone
from pushsvc.subscriptions import parse_subscription, subscription_token
from pushsvc.token_kinds import KIND_NAMES, default_kind, kinds_for_platform

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9:_\-.]{8,4096}$")
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")

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


@dataclass(frozen=True)
class Device:
    """One device: what a registration says (parse_device) and, read back from the store
    (store/devices.py `read_device`), its stored state too; the API's `Device`. Unique per (app, token). What a
    push to it needs of it is a `model.Recipient`."""

    app: str
    token: str
    platform: str
    # token_kinds.KINDS; empty: the platform's default.
    kind: str = ""
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    locale: str | None = None
    timezone: str | None = None
    app_version: str | None = None
    # Message categories the user opted out of.
    opt_out: tuple[str, ...] = ()
    # Web Push devices: the browser's subscription (where to send, and the keys to encrypt for).
    subscription: WebSubscription | None = None
    # Live Activity update tokens: the activity the token belongs to.
    activity_id: str | None = None
    # The stored state, set by the store when it reads a device; a registration not stored yet has these
    # defaults (every registration makes the device active: a dead token registered again is live again).
    id: str | None = None
    active: bool = True
    deactivated_reason: str | None = None
    # Epoch seconds of the last registration; None for devices registered before it was recorded.
    registered_at: float | None = None


def parse_device(
    body: Any, known_apps: frozenset[str], web_hosts: Mapping[str, Collection[str]] | None = None
) -> Device:
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
    return Device(
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


def opt_str(obj: dict, key: str, max_length: int = 256, pattern: re.Pattern[str] | None = None) -> str | None:
    """An optional string field of a flat object: non-blank, at most `max_length`, matching `pattern`."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise RequestError(key, f"must be a non-empty string of at most {max_length} characters")
    if pattern is not None and not pattern.match(value):
        raise RequestError(key, "has an invalid format")
    return value


def str_list(obj: dict, key: str, max_items: int = 50, max_length: int = 128) -> tuple[str, ...]:
    """A list of non-empty strings (tags, categories), duplicates dropped in order."""
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > max_items:
        raise RequestError(key, f"must be a list of at most {max_items} strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > max_length:
            raise RequestError(f"{key}[{i}]", f"must be a non-empty string of at most {max_length} characters")
    return tuple(dict.fromkeys(value))
