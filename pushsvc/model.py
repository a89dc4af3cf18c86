"""Request, message, device and outcome types, and validation of the request contract.

The contract (README "Request contract") is shared by Kafka and the HTTP API. Validation is strict:
unknown keys are rejected so that a producer's typo ("ttl_second") fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

MAX_ID_LENGTH = 128
MAX_TOKENS_PER_REQUEST = 1000
MAX_USERS_PER_REQUEST = 10_000
MAX_TAGS = 50
MAX_TTL_SECONDS = 28 * 24 * 3600  # FCM's upper bound; APNs stores for a limited time anyway
MAX_COLLAPSE_KEY_BYTES = 64  # APNs apns-collapse-id limit
# Counts that no provider payload could carry anyway (4 KiB); the byte limits themselves are checked at
# intake with the providers' own payload builders (ingest/payload_limits.py).
MAX_LOCALIZED = 200
MAX_DATA_KEYS = 100
MAX_FIELD_NAME_IN_ERRORS = 64  # an unknown key of a megabyte is named by its start
MAX_BADGE = 2**31 - 1  # fits every platform's badge integer
# data numbers: JSON has no NaN/Infinity, and integers must round-trip through orjson (signed or unsigned
# 64 bits), which encodes the stored request and the FCM message.
MIN_DATA_INT = -(2**63)
MAX_DATA_INT = 2**64 - 1
# send_at must fall in [SEND_AT_MIN, SEND_AT_MAX). Nobody schedules a push outside it, and inside it every
# time computed from it (UTC conversion, each IANA zone's offset for local-time waves, a day added for quiet
# hours) stays far from datetime's year 1..9999 range: an offset near year 9999 raised OverflowError.
SEND_AT_MIN = datetime(2000, 1, 1, tzinfo=UTC)
SEND_AT_MAX = datetime(2100, 1, 1, tzinfo=UTC)
# FCM rejects these data keys; checked up front so the error names the key instead of a provider 400.
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")

Platform = Literal["ios", "android", "huawei", "web"]
PushType = Literal["alert", "background", "voip", "liveactivity"]
PUSH_TYPES: tuple[str, ...] = typing.get_args(PushType)
PLATFORMS: tuple[str, ...] = typing.get_args(Platform)
LIVE_ACTIVITY_EVENTS = ("start", "update", "end")
# Apple documents relevance scores as any number; a bound keeps stored requests sane.
MAX_RELEVANCE_SCORE = 1e9


class RequestError(ValueError):
    """The request breaks the contract; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotificationState(enum.StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    DISPATCHING = "dispatching"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(enum.StrEnum):
    """Final classification of one delivery attempt (see providers/base.py)."""

    DELIVERED = "delivered"
    INVALID_TOKEN = "invalid_token"
    REJECTED = "rejected"
    RETRYABLE = "retryable"
    AUTH_ERROR = "auth_error"


@dataclass(frozen=True)
class Segment:
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    tokens: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    segment: Segment | None = None

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens else "users" if self.users else "segment"


@dataclass(frozen=True)
class LocalizedText:
    title: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class LiveActivity:
    """An APNs Live Activity push (options.push_type liveactivity): `aps.event` and what goes with it.

    Times are epoch seconds. A start goes to push-to-start tokens and carries the activity's type and
    attributes; an update or an end goes to the activity's own update token(s).
    """

    event: Literal["start", "update", "end"]
    # aps.content-state, the activity's ContentState as JSON. None only for an end that leaves the last state
    # shown (the payload then has no content-state: an empty object would not decode as the app's type).
    content_state: Mapping[str, Any] | None
    # aps.timestamp: when the content state was current; Apple drops an update older than the one shown.
    # None in a request: intake stamps the moment it was accepted (stamp_live_activity) and stores it; an
    # adapter given none (a delivery built outside intake) uses the moment it sends.
    timestamp: int | None = None
    # The activity an update/end is for: with a users or segment target, only update tokens registered with
    # this activity id receive it.
    activity_id: str | None = None
    stale_date: int | None = None
    dismissal_date: int | None = None
    relevance_score: float | None = None
    attributes_type: str | None = None
    attributes: Mapping[str, Any] | None = None


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
        """Title and body for a device locale: exact match ("pt-BR"), then language ("pt"), then default."""
        if locale and self.localized:
            normalized = locale.replace("_", "-")
            for candidate in (normalized, normalized.split("-")[0]):
                for key, text in self.localized.items():
                    if key.lower() == candidate.lower():
                        return LocalizedText(text.title or self.title, text.body or self.body)
        return LocalizedText(self.title, self.body)

    def data_as_strings(self) -> dict[str, str]:
        """FCM data values must be strings: numbers and booleans are converted, JSON-style."""
        return {key: _data_value_as_string(value) for key, value in self.data.items()}


@dataclass(frozen=True)
class Options:
    priority: Literal["high", "normal"] = "high"
    ttl_seconds: int | None = None
    collapse_key: str | None = None
    push_type: PushType = "alert"
    send_at: datetime | None = None
    local_time: bool = False
    # Build and check every device's payload (FCM: validate_only) without delivering it.
    dry_run: bool = False


@dataclass(frozen=True)
class PushRequest:
    id: str
    app: str
    target: Target
    message: Message
    options: Options

    @property
    def route(self) -> str:
        """Which tokens the push is for (token_kinds.TokenKind.push_types): its push type, except a Live
        Activity's start, which goes to push-to-start tokens."""
        return route_of(self.options, self.message)

    @property
    def activity_id(self) -> str | None:
        """The activity a Live Activity update or end is for (only its update tokens receive it); None for
        every other push, a start included."""
        activity = self.message.live_activity
        return activity.activity_id if activity is not None and activity.event != "start" else None

    def takes(self, kind: str, activity_id: str | None) -> bool:
        """Whether a device of token `kind` (registered for `activity_id`) receives this push."""
        from pushsvc.token_kinds import receives

        if not receives(kind, self.route):
            return False
        return self.activity_id is None or self.activity_id == activity_id


def stamp_live_activity(request: PushRequest, raw: Mapping[str, Any], now: float) -> tuple[PushRequest, dict]:
    """The request (and its JSON) with a Live Activity's missing `timestamp` set to when it is meant to show:
    its acceptance (`now`), or its `send_at` if later.

    Apple orders a Live Activity's updates by aps.timestamp and drops one older than what the device shows.
    Stamped once when the request is accepted and stored with it, every attempt and every replica sends the
    same time: a retry of an older update can never overtake a newer one by being stamped later, and a
    scheduled update is not older than one sent before its time. A local-time one (a moment per zone) is
    left unstamped: the adapter stamps each send.
    """
    activity = request.message.live_activity
    if activity is None or activity.timestamp is not None or request.options.local_time:
        return request, dict(raw)
    send_at = request.options.send_at
    stamp = int(max(now, send_at.timestamp())) if send_at is not None else int(now)
    message = dict(raw["message"])
    message["live_activity"] = {**message["live_activity"], "timestamp": stamp}
    stamped_activity = dataclasses.replace(activity, timestamp=stamp)
    stamped = dataclasses.replace(request, message=dataclasses.replace(request.message, live_activity=stamped_activity))
    return stamped, {**raw, "message": message}


def route_of(options: Options, message: Message) -> str:
    activity = message.live_activity
    if options.push_type == "liveactivity" and activity is not None and activity.event == "start":
        return "liveactivity_start"
    return options.push_type


@dataclass(frozen=True)
class WebSubscription:
    """A browser's Web Push subscription (the PushSubscription JSON: endpoint and keys)."""

    endpoint: str
    p256dh: str  # base64url of the client's P-256 public key (65 bytes, uncompressed)
    auth: str  # base64url of the 16-byte authentication secret


@dataclass(frozen=True)
class Device:
    """A registered device as the dispatcher needs it."""

    app: str
    token: str
    platform: str
    locale: str | None = None
    timezone: str | None = None
    user_id: str | None = None
    # What the token is for (pushsvc/token_kinds.py: apns, apns_voip, fcm, ...). Left empty, the platform's
    # default (as for devices registered before kinds existed).
    kind: str = ""
    # Web Push devices only: where and how to send (the token is then pushsvc's name for the subscription).
    subscription: WebSubscription | None = None
    # Live Activity update tokens only: the activity the token belongs to.
    activity_id: str | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            from pushsvc.token_kinds import default_kind

            object.__setattr__(self, "kind", default_kind(self.platform) or "")


def _data_value_as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------- parsing


def parse_request(obj: Any, known_apps: frozenset[str] | None = None) -> PushRequest:
    """Validate a decoded JSON request and build a PushRequest; raises RequestError naming the field."""
    root = _mapping(obj, "request")
    _no_unknown(root, "", {"id", "app", "target", "message", "options"})
    request_id = _string(root.get("id"), "id", max_length=MAX_ID_LENGTH)
    app = _string(root.get("app"), "app", max_length=128)
    if known_apps is not None and app not in known_apps:
        raise RequestError("app", f"unknown app {app!r}")
    options = _parse_options(root.get("options", {}))
    message = _parse_message(root.get("message"), options)
    target = _parse_target(root.get("target"))
    activity = message.live_activity
    if activity is not None and activity.event != "start" and not target.tokens and activity.activity_id is None:
        # Every update token of the users would get it, each activity showing another's state.
        raise RequestError(
            "message.live_activity.activity_id", "required to update or end an activity of users or a segment"
        )
    return PushRequest(id=request_id, app=app, target=target, message=message, options=options)


def _parse_target(obj: Any) -> Target:
    target = _mapping(obj, "target")
    kinds = [k for k in ("tokens", "users", "segment") if k in target]
    _no_unknown(target, "target", {"tokens", "users", "segment"})
    if len(kinds) != 1:
        raise RequestError("target", "must hold exactly one of tokens, users, segment")
    kind = kinds[0]
    if kind == "tokens":
        return Target(tokens=_string_list(target["tokens"], "target.tokens", MAX_TOKENS_PER_REQUEST, 4096))
    if kind == "users":
        return Target(users=_string_list(target["users"], "target.users", MAX_USERS_PER_REQUEST, 256))
    segment = _mapping(target["segment"], "target.segment")
    _no_unknown(segment, "target.segment", {"tags_any", "tags_all"})
    tags_any = _string_list(
        segment.get("tags_any", []), "target.segment.tags_any", MAX_TAGS, 128, allow_empty=True
    )
    tags_all = _string_list(
        segment.get("tags_all", []), "target.segment.tags_all", MAX_TAGS, 128, allow_empty=True
    )
    if not tags_any and not tags_all:
        raise RequestError(
            "target.segment", "needs tags_any or tags_all (an empty segment would target everyone)"
        )
    return Target(segment=Segment(tags_any=tags_any, tags_all=tags_all))


def _parse_message(obj: Any, options: Options) -> Message:
    msg = _mapping(obj, "message")
    _no_unknown(
        msg,
        "message",
        {
            "title", "body", "data", "badge", "sound", "category", "thread_id", "mutable_content", "localized",
            "live_activity",
        },
    )
    title = _opt_string(msg.get("title"), "message.title", 1024)
    body = _opt_string(msg.get("body"), "message.body", 4096)
    data = _parse_data(msg.get("data", {}))
    badge = msg.get("badge")
    if badge is not None and (not isinstance(badge, int) or isinstance(badge, bool) or not 0 <= badge <= MAX_BADGE):
        raise RequestError("message.badge", f"must be an integer between 0 and {MAX_BADGE}")
    mutable = msg.get("mutable_content", False)
    if not isinstance(mutable, bool):
        raise RequestError("message.mutable_content", "must be true or false")
    localized: dict[str, LocalizedText] = {}
    localized_obj = _mapping(msg.get("localized", {}), "message.localized")
    if len(localized_obj) > MAX_LOCALIZED:
        raise RequestError("message.localized", f"at most {MAX_LOCALIZED} locales")
    for locale, text in localized_obj.items():
        path = _child("message.localized", locale)
        if not locale or len(locale) > 35 or not _encodable(locale):
            raise RequestError(path, "locale must be a BCP 47 tag such as 'en' or 'pt-BR'")
        entry = _mapping(text, path)
        _no_unknown(entry, path, {"title", "body"})
        localized[locale] = LocalizedText(
            _opt_string(entry.get("title"), f"{path}.title", 1024),
            _opt_string(entry.get("body"), f"{path}.body", 4096),
        )
    message = Message(
        title=title,
        body=body,
        data=data,
        badge=badge,
        sound=_opt_string(msg.get("sound"), "message.sound", 256),
        category=_opt_string(msg.get("category"), "message.category", 256),
        thread_id=_opt_string(msg.get("thread_id"), "message.thread_id", 256),
        mutable_content=mutable,
        localized=localized,
        live_activity=_parse_live_activity(msg.get("live_activity"), options),
    )
    has_text = bool(title or body or any(t.title or t.body for t in localized.values()))
    if options.push_type == "liveactivity":
        _check_live_activity_alert(msg, message)
        return message
    if options.push_type == "alert" and not has_text:
        raise RequestError(
            "message", "an alert needs a title or body (use push_type background for data only)"
        )
    if (
        options.push_type == "background"
        and (has_text or message.sound or message.badge is not None)
        and not data
    ):
        raise RequestError("message.data", "a background push carries data, not title/body/sound/badge")
    if options.push_type == "voip":
        # PushKit hands the payload to the app, which reports the call to CallKit: data only, no alert.
        if has_text or message.sound or message.badge is not None:
            raise RequestError("message", "a voip push carries data only, not title/body/sound/badge")
        if not data:
            raise RequestError("message.data", "a voip push needs data (the call details for the app)")
    return message


def _check_live_activity_alert(msg: Mapping[str, Any], message: Message) -> None:
    """A Live Activity push's alert is title, body and sound (ActivityKit's AlertConfiguration); the other
    message fields belong to regular alerts."""
    for name in ("data", "badge", "category", "thread_id", "mutable_content"):
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
    data = _mapping(obj, "message.data")
    if len(data) > MAX_DATA_KEYS:
        raise RequestError("message.data", f"at most {MAX_DATA_KEYS} keys")
    for key, value in data.items():
        path = _child("message.data", key)
        if not key:
            raise RequestError("message.data", "keys must be non-empty")
        if key in RESERVED_DATA_KEYS or key.lower().startswith(RESERVED_DATA_PREFIXES):
            raise RequestError(
                path, "reserved key (FCM forbids from, notification, message_type, google*, gcm*)"
            )
        if value is None or not isinstance(value, str | int | float | bool):
            raise RequestError(path, "values must be strings, numbers or booleans (FCM data is a string map)")
        if not _encodable(key) or (isinstance(value, str) and not _encodable(value)):
            raise RequestError(path, NOT_UNICODE)
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(path, "numbers must be finite")
        if isinstance(value, int) and not isinstance(value, bool) and not MIN_DATA_INT <= value <= MAX_DATA_INT:
            raise RequestError(path, "integers must fit in 64 bits (send larger numbers as strings)")
    return dict(data)


LIVE_ACTIVITY_FIELDS = {
    "event", "content_state", "timestamp", "activity_id", "stale_date", "dismissal_date", "relevance_score",
    "attributes_type", "attributes",
}


def _parse_live_activity(obj: Any, options: Options) -> LiveActivity | None:
    """`message.live_activity`: required with push type liveactivity, refused with any other."""
    path = "message.live_activity"
    if options.push_type != "liveactivity":
        if obj is not None:
            raise RequestError(path, "only with options.push_type 'liveactivity'")
        return None
    activity = _mapping(obj, path)
    _no_unknown(activity, path, LIVE_ACTIVITY_FIELDS)
    event = activity.get("event")
    if event not in LIVE_ACTIVITY_EVENTS:
        raise RequestError(f"{path}.event", f"must be one of {', '.join(LIVE_ACTIVITY_EVENTS)}")
    # A start and an update say what to show; an end may leave the last content shown.
    content_state = activity.get("content_state")
    if content_state is None and event != "end":
        raise RequestError(f"{path}.content_state", "required (the activity's ContentState as JSON)")
    if content_state is not None:
        content_state = _json_object(content_state, f"{path}.content_state")
    attributes_type = _opt_string(activity.get("attributes_type"), f"{path}.attributes_type", 256)
    attributes = activity.get("attributes")
    if event == "start":
        if attributes_type is None:
            raise RequestError(f"{path}.attributes_type", "required to start an activity (its ActivityAttributes type)")
        attributes = _json_object(attributes, f"{path}.attributes")
    elif attributes_type is not None or attributes is not None:
        raise RequestError(
            f"{path}.{'attributes_type' if attributes_type is not None else 'attributes'}", "only for event 'start'"
        )
    dismissal_date = _epoch(activity.get("dismissal_date"), f"{path}.dismissal_date")
    if dismissal_date is not None and event != "end":
        raise RequestError(f"{path}.dismissal_date", "only for event 'end'")
    score = activity.get("relevance_score")
    if score is not None and (
        not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score)
        or not -MAX_RELEVANCE_SCORE <= score <= MAX_RELEVANCE_SCORE
    ):
        raise RequestError(f"{path}.relevance_score", "must be a finite number")
    return LiveActivity(
        event=event,
        content_state=content_state,
        timestamp=_epoch(activity.get("timestamp"), f"{path}.timestamp"),
        activity_id=_opt_string(activity.get("activity_id"), f"{path}.activity_id", MAX_ID_LENGTH),
        stale_date=_epoch(activity.get("stale_date"), f"{path}.stale_date"),
        dismissal_date=dismissal_date,
        relevance_score=score,
        attributes_type=attributes_type,
        attributes=attributes,
    )


def _epoch(value: Any, path: str) -> int | None:
    """A time as integer epoch seconds (what APNs takes), within SEND_AT_MIN..SEND_AT_MAX."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(path, "must be an integer (seconds since the epoch)")
    if not SEND_AT_MIN.timestamp() <= value < SEND_AT_MAX.timestamp():
        raise RequestError(path, f"must be between {SEND_AT_MIN:%Y-%m-%d} and {SEND_AT_MAX:%Y-%m-%d} (UTC)")
    return value


MAX_JSON_DEPTH = 16


def _json_object(obj: Any, path: str) -> dict[str, Any]:
    """A JSON object passed through to the device as it is (a Live Activity's state or attributes): any JSON
    values, nested at most MAX_JSON_DEPTH deep, strings valid Unicode, numbers finite."""
    mapping = _mapping(obj, path)
    _check_json(mapping, path, 0)
    return dict(mapping)


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise RequestError(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not _encodable(key):
                raise RequestError(path, "keys must be strings of valid Unicode")
            _check_json(item, _child(path, key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        if not _encodable(value):
            raise RequestError(path, NOT_UNICODE)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(path, "numbers must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_DATA_INT <= value <= MAX_DATA_INT:
            raise RequestError(path, "integers must fit in 64 bits")
    elif value is not None and not isinstance(value, bool):
        raise RequestError(path, f"not a JSON value ({_json_type(value)})")


def _parse_options(obj: Any) -> Options:
    opts = _mapping(obj, "options")
    _no_unknown(
        opts,
        "options",
        {"priority", "ttl_seconds", "collapse_key", "push_type", "send_at", "local_time", "dry_run"},
    )
    push_type = opts.get("push_type", "alert")
    if push_type not in PUSH_TYPES:
        raise RequestError("options.push_type", f"must be one of {', '.join(PUSH_TYPES)}")
    # Apple requires priority 5 for background pushes and 10 for VoIP; the default follows the push type.
    priority = opts.get("priority", "normal" if push_type == "background" else "high")
    if priority not in ("high", "normal"):
        raise RequestError("options.priority", "must be 'high' or 'normal'")
    if push_type == "background" and priority == "high":
        raise RequestError("options.priority", "background pushes must use priority 'normal' (APNs rule)")
    if push_type == "voip" and priority == "normal":
        raise RequestError("options.priority", "voip pushes must use priority 'high' (a call can't wait)")
    ttl = opts.get("ttl_seconds")
    if ttl is not None and (
        not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL_SECONDS
    ):
        raise RequestError("options.ttl_seconds", f"must be an integer between 0 and {MAX_TTL_SECONDS}")
    collapse_key = _opt_string(opts.get("collapse_key"), "options.collapse_key", None)
    if collapse_key is not None and len(collapse_key.encode()) > MAX_COLLAPSE_KEY_BYTES:
        raise RequestError("options.collapse_key", f"must be at most {MAX_COLLAPSE_KEY_BYTES} bytes")
    local_time = opts.get("local_time", False)
    if not isinstance(local_time, bool):
        raise RequestError("options.local_time", "must be true or false")
    dry_run = opts.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RequestError("options.dry_run", "must be true or false")
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


def _parse_send_at(value: Any, local_time: bool) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError("options.send_at", "must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RequestError("options.send_at", f"not ISO 8601: {value[:64]!r}") from exc
    out_of_range = f"must be between {SEND_AT_MIN:%Y-%m-%d} and {SEND_AT_MAX:%Y-%m-%d} (UTC)"
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


# ----------------------------------------------------------------------------------------------- helpers


def _mapping(obj: Any, path: str) -> Mapping[str, Any]:
    if obj is None:
        raise RequestError(path, "required")
    if not isinstance(obj, Mapping):
        raise RequestError(path, f"must be an object, got {_json_type(obj)}")
    return obj


def _no_unknown(obj: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise RequestError(_child(path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _child(path: str, key: Any) -> str:
    """The dotted path of `key` under `path`; an empty key names its parent, a huge one is cut short."""
    key = str(key)
    if not key:
        return path or "request"
    if len(key) > MAX_FIELD_NAME_IN_ERRORS:
        key = key[:MAX_FIELD_NAME_IN_ERRORS] + "..."
    return f"{path}.{key}" if path else key


def _string(value: Any, path: str, max_length: int | None) -> str:
    if value is None:
        raise RequestError(path, "required non-empty string")
    if not isinstance(value, str):
        raise RequestError(path, f"must be a string, got {_json_type(value)}")
    if not value.strip():
        raise RequestError(path, "must not be empty or blank")
    if max_length is not None and len(value) > max_length:
        raise RequestError(path, f"longer than {max_length} characters")
    if not _encodable(value):
        raise RequestError(path, NOT_UNICODE)
    return value


NOT_UNICODE = "not valid Unicode (lone surrogate)"


def _encodable(value: str) -> bool:
    """False for a str with lone surrogates: JSON bytes cannot carry one, but a Python caller can, and neither
    the providers' UTF-8 payloads nor MongoDB's BSON can encode it."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _opt_string(value: Any, path: str, max_length: int | None) -> str | None:
    return None if value is None else _string(value, path, max_length)


def _string_list(
    value: Any, path: str, max_items: int, max_length: int, allow_empty: bool = False
) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(path, f"must be a list, got {_json_type(value)}")
    if not value and not allow_empty:
        raise RequestError(path, "must not be empty")
    if len(value) > max_items:
        raise RequestError(path, f"at most {max_items} items")
    items = tuple(_string(v, f"{path}[{i}]", max_length) for i, v in enumerate(value))
    return tuple(dict.fromkeys(items))  # drop duplicates, keep order: one device is sent one copy


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
