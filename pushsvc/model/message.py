"""`message`: what a push says — text (with per-locale variants), data, badge, sound, and the rules each push
type sets for them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import (
    MAX_DATA_INT,
    MIN_DATA_INT,
    NOT_UNICODE,
    child_path,
    encodable,
    optional_string,
    reject_unknown,
    require_mapping,
    required_string,
)
from pushsvc.model.live_activity import LiveActivity, parse_live_activity
from pushsvc.model.options import Options

MESSAGE_FIELDS = (
    "title", "body", "data", "badge", "sound", "category", "thread_id", "mutable_content", "localized",
    "live_activity",
)
# The message's strings and their longest length in characters; a `localized` entry holds title and body.
TEXT_LIMITS = {"title": 1024, "body": 4096, "sound": 256, "category": 256, "thread_id": 256}
LOCALIZED_FIELDS = ("title", "body")
MAX_LOCALE_LENGTH = 35
# Counts that no provider payload could carry anyway (4 KiB); the byte limits themselves are checked at
# intake with the providers' own payload builders (ingest/payload_limits.py).
MAX_LOCALIZED = 200
MAX_DATA_KEYS = 100
MAX_BADGE = 2**31 - 1  # fits every platform's badge integer
# FCM rejects these data keys; checked up front so the error names the key instead of a provider 400.
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")
# A Live Activity's alert is title, body and sound (ActivityKit's AlertConfiguration); these belong to
# regular alerts and are refused with it.
NOT_FOR_LIVE_ACTIVITY = ("data", "badge", "category", "thread_id", "mutable_content")


@dataclass(frozen=True)
class LocalizedText:
    title: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class Message:
    title: str | None = None
    body: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    badge: int | None = None
    sound: str | None = None
    category: str | None = None
    thread_id: str | None = None
    mutable_content: bool = False
    localized: Mapping[str, LocalizedText] = field(default_factory=dict)
    live_activity: LiveActivity | None = None

    def text_for(self, locale: str | None) -> LocalizedText:
        """Title and body for a device locale: those of `localized_key(locale)`, else the default."""
        key = self.localized_key(locale)
        if key is None:
            return LocalizedText(self.title, self.body)
        text = self.localized[key]
        return LocalizedText(text.title or self.title, text.body or self.body)

    def localized_key(self, locale: str | None) -> str | None:
        """Which `localized` text a device locale gets: exact match ("pt-BR"), then language ("pt"); None: the
        default text."""
        if locale and self.localized:
            normalized = locale.replace("_", "-")
            for candidate in (normalized, normalized.split("-")[0]):
                for key in self.localized:
                    if key.lower() == candidate.lower():
                        return key
        return None

    def data_as_strings(self) -> dict[str, str]:
        """FCM data values must be strings: numbers and booleans are converted, JSON-style."""
        return {key: _data_value_as_string(value) for key, value in self.data.items()}


def _data_value_as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_message(obj: Any, options: Options) -> Message:
    msg = require_mapping(obj, "message")
    reject_unknown(msg, "message", MESSAGE_FIELDS)
    title = _text(msg, "title")
    body = _text(msg, "body")
    data = _parse_data(msg.get("data", {}))
    badge = msg.get("badge")
    if badge is not None and (not isinstance(badge, int) or isinstance(badge, bool) or not 0 <= badge <= MAX_BADGE):
        raise RequestError("message.badge", f"must be an integer between 0 and {MAX_BADGE}")
    mutable = msg.get("mutable_content", False)
    if not isinstance(mutable, bool):
        raise RequestError("message.mutable_content", "must be true or false")
    localized = _parse_localized(msg.get("localized", {}))
    message = Message(
        title=title,
        body=body,
        data=data,
        badge=badge,
        sound=_text(msg, "sound"),
        category=_text(msg, "category"),
        thread_id=_text(msg, "thread_id"),
        mutable_content=mutable,
        localized=localized,
        live_activity=parse_live_activity(msg.get("live_activity"), options),
    )
    if options.push_type == "liveactivity":
        _check_live_activity_alert(msg, message)
    else:
        _check_push_type(message, options)
    return message


def _text(msg: Mapping[str, Any], name: str) -> str | None:
    value = msg.get(name)
    # The path is named only for a value given (most of a request's text fields are absent).
    return None if value is None else required_string(value, f"message.{name}", TEXT_LIMITS[name])


def _parse_localized(obj: Any) -> dict[str, LocalizedText]:
    localized: dict[str, LocalizedText] = {}
    localized_obj = require_mapping(obj, "message.localized")
    if len(localized_obj) > MAX_LOCALIZED:
        raise RequestError("message.localized", f"at most {MAX_LOCALIZED} locales")
    for locale, text in localized_obj.items():
        path = child_path("message.localized", locale)
        if not locale or len(locale) > MAX_LOCALE_LENGTH or not encodable(locale):
            raise RequestError(path, "locale must be a BCP 47 tag such as 'en' or 'pt-BR'")
        entry = require_mapping(text, path)
        reject_unknown(entry, path, LOCALIZED_FIELDS)
        localized[locale] = LocalizedText(
            *(optional_string(entry.get(name), f"{path}.{name}", TEXT_LIMITS[name]) for name in LOCALIZED_FIELDS)
        )
    return localized


def _check_push_type(message: Message, options: Options) -> None:
    """What an alert, a background and a VoIP push must and must not carry."""
    has_text = bool(
        message.title or message.body or any(t.title or t.body for t in message.localized.values())
    )
    if options.push_type == "alert" and not has_text:
        raise RequestError(
            "message", "an alert needs a title or body (use push_type background for data only)"
        )
    alert_parts = has_text or message.sound or message.badge is not None
    if options.push_type == "background" and alert_parts and not message.data:
        raise RequestError("message.data", "a background push carries data, not title/body/sound/badge")
    if options.push_type == "voip":
        # PushKit hands the payload to the app, which reports the call to CallKit: data only, no alert.
        if alert_parts:
            raise RequestError("message", "a voip push carries data only, not title/body/sound/badge")
        if not message.data:
            raise RequestError("message.data", "a voip push needs data (the call details for the app)")


def _check_live_activity_alert(msg: Mapping[str, Any], message: Message) -> None:
    """A Live Activity push's alert is title, body and sound (ActivityKit's AlertConfiguration); the other
    message fields belong to regular alerts."""
    for name in NOT_FOR_LIVE_ACTIVITY:
        if name in msg:  # strict, as everywhere: a field the push cannot carry is refused, never dropped
            raise RequestError(f"message.{name}", "not part of a Live Activity push (use live_activity)")
    # Every device's text falls back to these two, so with one of them every locale has an alert.
    has_text = bool(message.title or message.body)
    activity = message.live_activity
    if activity is not None and activity.event == "start" and not has_text:
        # Apple: a push that starts an activity carries an alert; without one no activity starts.
        raise RequestError("message", "starting a Live Activity needs an alert: give message.title or message.body")
    if message.sound and not has_text:
        # The sound is part of the alert, which Apple defines by its text; a sound alone is undefined behaviour.
        raise RequestError("message.sound", "a Live Activity alert's sound needs message.title or message.body")


def _parse_data(obj: Any) -> dict[str, Any]:
    data = require_mapping(obj, "message.data")
    if len(data) > MAX_DATA_KEYS:
        raise RequestError("message.data", f"at most {MAX_DATA_KEYS} keys")
    for key, value in data.items():
        path = child_path("message.data", key)
        if not key:
            raise RequestError("message.data", "keys must be non-empty")
        if key in RESERVED_DATA_KEYS or key.lower().startswith(RESERVED_DATA_PREFIXES):
            raise RequestError(
                path, "reserved key (FCM forbids from, notification, message_type, google*, gcm*)"
            )
        if value is None or not isinstance(value, str | int | float | bool):
            raise RequestError(path, "values must be strings, numbers or booleans (FCM data is a string map)")
        if not encodable(key) or (isinstance(value, str) and not encodable(value)):
            raise RequestError(path, NOT_UNICODE)
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(path, "numbers must be finite")
        if isinstance(value, int) and not isinstance(value, bool) and not MIN_DATA_INT <= value <= MAX_DATA_INT:
            raise RequestError(path, "integers must fit in 64 bits (send larger numbers as strings)")
    return dict(data)
