"""`message.live_activity`: an APNs Live Activity's start, update or end, and the JSON it carries."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import (
    MAX_DATA_INT,
    MAX_ID_LENGTH,
    MIN_DATA_INT,
    NOT_UNICODE,
    child_path,
    encodable,
    json_type,
    optional_string,
    reject_unknown,
    require_mapping,
)
from pushsvc.model.options import SEND_AT_MAX, SEND_AT_MIN, SEND_AT_RANGE, Options

LiveActivityEvent = Literal["start", "update", "end"]
LIVE_ACTIVITY_EVENTS: tuple[str, ...] = typing.get_args(LiveActivityEvent)
LIVE_ACTIVITY_FIELDS = frozenset({
    "event", "content_state", "timestamp", "activity_id", "stale_date", "dismissal_date", "relevance_score",
    "attributes_type", "attributes",
})
# Epoch-second fields lie in the send_at range: [EPOCH_MIN, EPOCH_MAX).
EPOCH_FIELDS = ("timestamp", "stale_date", "dismissal_date")
EPOCH_MIN = int(SEND_AT_MIN.timestamp())
EPOCH_MAX = int(SEND_AT_MAX.timestamp())
MAX_ATTRIBUTES_TYPE_LENGTH = 256
# Apple documents relevance scores as any number; a bound keeps stored requests sane.
MAX_RELEVANCE_SCORE = 1e9
MAX_JSON_DEPTH = 16


@dataclass(frozen=True)
class LiveActivity:
    """An APNs Live Activity push (options.push_type liveactivity): `aps.event` and what goes with it.

    Times are epoch seconds. A start goes to push-to-start tokens and carries the activity's type and
    attributes; an update or an end goes to the activity's own update token(s).
    """

    event: LiveActivityEvent
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


def parse_live_activity(obj: Any, options: Options) -> LiveActivity | None:
    """`message.live_activity`: required with push type liveactivity, refused with any other."""
    path = "message.live_activity"
    if options.push_type != "liveactivity":
        if obj is not None:
            raise RequestError(path, "only with options.push_type 'liveactivity'")
        return None
    activity = require_mapping(obj, path)
    reject_unknown(activity, path, LIVE_ACTIVITY_FIELDS)
    event = activity.get("event")
    if event not in LIVE_ACTIVITY_EVENTS:
        raise RequestError(f"{path}.event", f"must be one of {', '.join(LIVE_ACTIVITY_EVENTS)}")
    # A start and an update say what to show; an end may leave the last content shown.
    content_state = activity.get("content_state")
    if content_state is None and event != "end":
        raise RequestError(f"{path}.content_state", "required (the activity's ContentState as JSON)")
    if content_state is not None:
        content_state = json_object(content_state, f"{path}.content_state")
    attributes_type, attributes = _parse_attributes(activity, event, path)
    dismissal_date = _epoch(activity.get("dismissal_date"), f"{path}.dismissal_date")
    if dismissal_date is not None and event != "end":
        raise RequestError(f"{path}.dismissal_date", "only for event 'end'")
    score = activity.get("relevance_score")
    if score is not None and (
        not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score)
        or not -MAX_RELEVANCE_SCORE <= score <= MAX_RELEVANCE_SCORE
    ):
        raise RequestError(
            f"{path}.relevance_score", f"must be a number between {-MAX_RELEVANCE_SCORE:g} and {MAX_RELEVANCE_SCORE:g}"
        )
    return LiveActivity(
        event=event,
        content_state=content_state,
        timestamp=_epoch(activity.get("timestamp"), f"{path}.timestamp"),
        activity_id=optional_string(activity.get("activity_id"), f"{path}.activity_id", MAX_ID_LENGTH),
        stale_date=_epoch(activity.get("stale_date"), f"{path}.stale_date"),
        dismissal_date=dismissal_date,
        relevance_score=score,
        attributes_type=attributes_type,
        attributes=attributes,
    )


def _parse_attributes(
    activity: Mapping[str, Any], event: str, path: str
) -> tuple[str | None, dict[str, Any] | None]:
    """attributes_type and attributes: required to start an activity, refused for the other events."""
    attributes_type = optional_string(
        activity.get("attributes_type"), f"{path}.attributes_type", MAX_ATTRIBUTES_TYPE_LENGTH
    )
    attributes = activity.get("attributes")
    if event == "start":
        if attributes_type is None:
            raise RequestError(f"{path}.attributes_type", "required to start an activity (its ActivityAttributes type)")
        return attributes_type, json_object(attributes, f"{path}.attributes")
    if attributes_type is not None or attributes is not None:
        raise RequestError(
            f"{path}.{'attributes_type' if attributes_type is not None else 'attributes'}", "only for event 'start'"
        )
    return None, None


def _epoch(value: Any, path: str) -> int | None:
    """A time as integer epoch seconds (what APNs takes), within SEND_AT_MIN..SEND_AT_MAX."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(path, "must be an integer (seconds since the epoch)")
    if not EPOCH_MIN <= value < EPOCH_MAX:
        raise RequestError(path, f"must be {SEND_AT_RANGE}")
    return value


def json_object(obj: Any, path: str) -> dict[str, Any]:
    """A JSON object passed through to the device as it is (a Live Activity's state or attributes): any JSON
    values, nested at most MAX_JSON_DEPTH deep, strings valid Unicode, numbers finite."""
    mapping = require_mapping(obj, path)
    _check_json(mapping, path, 0)
    return dict(mapping)


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise RequestError(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not encodable(key):
                raise RequestError(path, "keys must be strings of valid Unicode")
            _check_json(item, child_path(path, key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        if not encodable(value):
            raise RequestError(path, NOT_UNICODE)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(path, "numbers must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_DATA_INT <= value <= MAX_DATA_INT:
            raise RequestError(path, "integers must fit in 64 bits")
    elif value is not None and not isinstance(value, bool):
        raise RequestError(path, f"not a JSON value ({json_type(value)})")

