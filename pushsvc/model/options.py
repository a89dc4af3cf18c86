"""`options`: how and when a request is sent — push type, priority, TTL, collapse key, send time, dry run."""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import optional_string, reject_unknown, require_mapping

OPTION_FIELDS = ("priority", "ttl_seconds", "collapse_key", "push_type", "send_at", "local_time", "dry_run")
PushType = Literal["alert", "background", "voip", "liveactivity"]
PUSH_TYPES: tuple[str, ...] = typing.get_args(PushType)
Priority = Literal["high", "normal"]
PRIORITIES: tuple[str, ...] = typing.get_args(Priority)
MAX_TTL_SECONDS = 28 * 24 * 3600  # FCM's upper bound; APNs stores for a limited time anyway
MAX_COLLAPSE_KEY_BYTES = 64  # APNs apns-collapse-id limit
# A collapse key is an HTTP header value (apns-collapse-id, Web Push's Topic): no control characters, and no
# space at either end (RFC 9113 section 8.2.1 calls such a value malformed). Matched with fullmatch: Python's
# "$" also matches before a final newline.
COLLAPSE_KEY = re.compile(r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$")
# send_at must fall in [SEND_AT_MIN, SEND_AT_MAX). Nobody schedules a push outside it, and inside it every
# time computed from it (UTC conversion, each IANA zone's offset for local-time waves, a day added for quiet
# hours) stays far from datetime's year 1..9999 range: an offset near year 9999 raised OverflowError.
SEND_AT_MIN = datetime(2000, 1, 1, tzinfo=UTC)
SEND_AT_MAX = datetime(2100, 1, 1, tzinfo=UTC)
SEND_AT_RANGE = f"between {SEND_AT_MIN:%Y-%m-%d} and {SEND_AT_MAX:%Y-%m-%d} (UTC)"


@dataclass(frozen=True)
class Options:
    priority: Priority = "high"
    ttl_seconds: int | None = None
    collapse_key: str | None = None
    push_type: PushType = "alert"
    send_at: datetime | None = None
    local_time: bool = False
    # Build and check every device's payload (FCM: validate_only) without delivering it.
    dry_run: bool = False


def parse_options(obj: Any) -> Options:
    opts = require_mapping(obj, "options")
    reject_unknown(opts, "options", OPTION_FIELDS)
    push_type = opts.get("push_type", "alert")
    if push_type not in PUSH_TYPES:
        raise RequestError("options.push_type", f"must be one of {', '.join(PUSH_TYPES)}")
    priority = _parse_priority(opts, push_type)
    ttl = opts.get("ttl_seconds")
    if ttl is not None and (
        not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL_SECONDS
    ):
        raise RequestError("options.ttl_seconds", f"must be an integer between 0 and {MAX_TTL_SECONDS}")
    collapse_key = optional_string(opts.get("collapse_key"), "options.collapse_key", None)
    if collapse_key is not None and len(collapse_key.encode()) > MAX_COLLAPSE_KEY_BYTES:
        raise RequestError("options.collapse_key", f"must be at most {MAX_COLLAPSE_KEY_BYTES} bytes")
    if collapse_key is not None and not COLLAPSE_KEY.fullmatch(collapse_key):
        raise RequestError(
            "options.collapse_key", "must have no control characters and no space at either end (an HTTP header value)"
        )
    local_time = _boolean(opts, "local_time")
    dry_run = _boolean(opts, "dry_run")
    send_at = _parse_send_at(opts.get("send_at"), local_time)
    if local_time and send_at is None:
        raise RequestError("options.send_at", "required when local_time is true")
    return Options(
        priority=priority,
        ttl_seconds=ttl,
        collapse_key=collapse_key,
        push_type=push_type,
        send_at=send_at,
        local_time=local_time,
        dry_run=dry_run,
    )


def _parse_priority(opts: Mapping[str, Any], push_type: str) -> Priority:
    # Apple requires priority 5 for background pushes and 10 for VoIP; the default follows the push type.
    priority = opts.get("priority", "normal" if push_type == "background" else "high")
    if priority not in PRIORITIES:
        raise RequestError("options.priority", f"must be {' or '.join(repr(p) for p in PRIORITIES)}")
    if push_type == "background" and priority == "high":
        raise RequestError("options.priority", "background pushes must use priority 'normal' (APNs rule)")
    if push_type == "voip" and priority == "normal":
        raise RequestError("options.priority", "voip pushes must use priority 'high' (a call can't wait)")
    return priority


def _boolean(opts: Mapping[str, Any], key: str) -> bool:
    value = opts.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"options.{key}", "must be true or false")
    return value


def _parse_send_at(value: Any, local_time: bool) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError("options.send_at", "must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RequestError("options.send_at", f"not ISO 8601: {value[:64]!r}") from exc
    out_of_range = f"must be {SEND_AT_RANGE}"
    # The wall-clock year first: converting e.g. 9999-12-31T23:59-23:59 to UTC would overflow.
    if not SEND_AT_MIN.year <= parsed.year < SEND_AT_MAX.year:
        raise RequestError("options.send_at", out_of_range)
    if local_time:
        # A wall-clock time applied in each device's timezone: any offset given is meaningless, drop it.
        return parsed.replace(tzinfo=None)
    if parsed.tzinfo is None:
        raise RequestError("options.send_at", "needs a timezone offset (e.g. 'Z') unless local_time is true")
    utc = parsed.astimezone(UTC)
    if not SEND_AT_MIN <= utc < SEND_AT_MAX:
        raise RequestError("options.send_at", out_of_range)
    return utc
