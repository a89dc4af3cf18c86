"""Push Kit's checks of a messages:send body: its exact JSON shape, as Push Kit refuses it.

Unknown keys anywhere are refused (80100003), ``data`` must be a string, ``token`` a list of 1..1000 tokens,
android.urgency HIGH|NORMAL, android.category only with HIGH, android.ttl "<seconds>s" within 15 days and
ending after now (80100004), android.collapse_key an integer -1..100 (80100013), android.bi_tag at most 64
bytes, a notification's click_action complete, the message without its token at most 4096 bytes (80300008).
"""

from __future__ import annotations

import re
from typing import Any

from pushsvc.simulators.hms.answers import refuse, to_json
from pushsvc.simulators.http_server import Reply

MAX_MESSAGE_BYTES = 4096  # "The message body cannot exceed 4096 bytes (excluding token)"
MAX_TOKENS = 1000
MAX_TTL_SECONDS = 15 * 24 * 3600
MAX_BI_TAG_BYTES = 64

# Push tokens are long base64-ish strings; one with a space or other stray character is "invalid" (80300007).
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_:.+/=\-]{1,512}$")
_TTL = re.compile(r"^(\d+)(\.\d{1,9})?[sS]?$")
_TOP_KEYS = frozenset({"validate_only", "message"})
_MESSAGE_KEYS = frozenset({"data", "notification", "android", "apns", "webpush", "token", "topic", "condition"})
_NOTIFICATION_KEYS = frozenset({"title", "body", "image"})
_ANDROID_KEYS = frozenset(
    {"collapse_key", "urgency", "category", "ttl", "bi_tag", "receipt_id", "fast_app_target", "data", "notification"}
)
_ANDROID_NOTIFICATION_KEYS = frozenset(
    {
        "title", "body", "icon", "color", "sound", "default_sound", "tag", "click_action", "body_loc_key",
        "body_loc_args", "title_loc_key", "title_loc_args", "multi_lang_key", "channel_id", "notify_summary",
        "image", "style", "big_title", "big_body", "auto_clear", "notify_id", "group", "badge", "ticker",
        "auto_cancel", "when", "importance", "use_default_vibrate", "use_default_light", "vibrate_config",
        "visibility", "light_settings", "foreground_show", "inbox_content", "buttons", "profile_id",
    }
)
_CLICK_ACTION_KEYS = frozenset({"type", "intent", "action", "url", "rich_resource"})
_DATA_CATEGORIES = frozenset({"VOIP", "PLAY_VOICE"})  # high-priority data message scenarios


def check_request(payload: Any) -> Reply | None:
    """Push Kit's refusal of a messages:send body, or None when it would accept it."""
    try:
        _check_request(payload)
    except _Refused as refused:
        return refuse(refused.code, refused.detail or None)
    return None


class _Refused(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _object(value: Any, path: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused("80100003", f"{path} must be an object")
    for key in value:
        if key not in keys:
            raise _Refused("80100003", f"unknown field {path}.{key}")
    return value


def _strings(value: dict[str, Any], path: str, *names: str) -> None:
    for name in names:
        if name in value and not isinstance(value[name], str):
            raise _Refused("80100003", f"{path}.{name} must be a string")


def _check_request(payload: Any) -> None:
    body = _object(payload, "request", _TOP_KEYS)
    if not isinstance(body.get("validate_only", False), bool):
        raise _Refused("80100003", "validate_only must be a boolean")
    message = _object(body.get("message"), "message", _MESSAGE_KEYS)
    _check_target(message)
    _strings(message, "message", "data")
    if "notification" in message:
        _strings(_object(message["notification"], "message.notification", _NOTIFICATION_KEYS),
                 "message.notification", *_NOTIFICATION_KEYS)
    android = _object(message.get("android", {}), "message.android", _ANDROID_KEYS)
    _check_android(android)
    for name in ("apns", "webpush"):
        if name in message and not isinstance(message[name], dict):
            raise _Refused("80100003", f"message.{name} must be an object")
    if "data" not in message and "notification" not in message and "notification" not in android:
        raise _Refused("80100003", "neither data nor a notification")
    size = len(to_json({k: v for k, v in message.items() if k != "token"}))
    if size > MAX_MESSAGE_BYTES:
        raise _Refused("80300008", f"{size} bytes")


def _check_target(message: dict[str, Any]) -> None:
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        raise _Refused("80100003", "exactly one of token, topic, condition")
    if "token" not in message:
        return
    tokens = message["token"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _Refused("80100003", "message.token must be a list of strings")
    if not 1 <= len(tokens) <= MAX_TOKENS:
        raise _Refused("80300010", f"{len(tokens)} tokens")
    if not any(_TOKEN_SHAPE.match(t) for t in tokens):
        raise _Refused("80300007")


def _check_android(android: dict[str, Any]) -> None:
    _strings(android, "message.android", "urgency", "category", "ttl", "bi_tag", "receipt_id", "data")
    collapse_key = android.get("collapse_key", -1)
    if not isinstance(collapse_key, int) or isinstance(collapse_key, bool) or not -1 <= collapse_key <= 100:
        raise _Refused("80100013", f"collapse_key {collapse_key!r} is not an integer from -1 to 100")
    urgency = android.get("urgency", "NORMAL")
    if urgency not in ("HIGH", "NORMAL"):
        raise _Refused("80100001", f"urgency must be HIGH or NORMAL, not {urgency!r}")
    if "category" in android and (android["category"] not in _DATA_CATEGORIES or urgency != "HIGH"):
        raise _Refused("80100001", "category is VOIP or PLAY_VOICE, for a HIGH urgency data message")
    if "ttl" in android:
        match = _TTL.match(android["ttl"])
        if match is None:
            raise _Refused("80100001", f"malformed ttl {android['ttl']!r}")
        seconds = float(match.group(1) + (match.group(2) or ""))
        if seconds <= 0:
            raise _Refused("80100004")
        if seconds > MAX_TTL_SECONDS:
            raise _Refused("80100001", "ttl over 15 days")
    if "bi_tag" in android and len(android["bi_tag"].encode()) > MAX_BI_TAG_BYTES:
        raise _Refused("80100001", "bi_tag over 64 bytes")
    if android.get("fast_app_target", 1) not in (1, 2):
        raise _Refused("80100001", "fast_app_target must be 1 or 2")
    if "notification" in android:
        _check_android_notification(android["notification"])


def _check_android_notification(value: Any) -> None:
    path = "message.android.notification"
    notification = _object(value, path, _ANDROID_NOTIFICATION_KEYS)
    _strings(notification, path, "title", "body", "sound", "channel_id", "tag", "group", "image", "icon")
    if not notification.get("title") and not notification.get("body"):
        raise _Refused("80100003", f"{path} needs a title or a body")
    if not isinstance(notification.get("default_sound", False), bool):
        raise _Refused("80100003", f"{path}.default_sound must be a boolean")
    action = _object(notification.get("click_action"), f"{path}.click_action", _CLICK_ACTION_KEYS)
    kind = action.get("type")
    required = {1: ("intent", "action"), 2: ("url",), 3: (), 4: ("rich_resource",)}
    if kind not in required or isinstance(kind, bool):
        raise _Refused("80100003", f"{path}.click_action.type must be 1 to 4")
    if required[kind] and not any(action.get(name) for name in required[kind]):
        raise _Refused("80100003", f"{path}.click_action of type {kind} needs {' or '.join(required[kind])}")
