"""What a device reads from a Live Activity push (apns-push-type liveactivity), and why it would drop it.

APNs does not read the payload: a push with no ``aps.event`` gets its 200 and the device drops it. So does the
peer; it records what a device would read and the reasons it would drop the push, for tests to assert.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

LIVE_ACTIVITY_TOPIC_SUFFIX = ".push-type.liveactivity"
LIVE_ACTIVITY_EVENTS = ("start", "update", "end")
# A Live Activity lives at most 8 hours: a timestamp further ahead than that is dropped by the device (Apple
# developer forums, "Broadcast Push Notifications - Update ignored"); mostly milliseconds sent for seconds.
LIVE_ACTIVITY_MAX_FUTURE_SECONDS = 8 * 3600


@dataclass(frozen=True)
class LiveActivityPush:
    """What a device reads from an ActivityKit push (the aps keys of Apple's "Starting and updating Live
    Activities with ActivityKit push notifications"), and why it would drop the push (``problems``)."""

    event: Any
    timestamp: Any
    content_state: Any
    stale_date: Any = None
    dismissal_date: Any = None
    relevance_score: Any = None
    attributes_type: Any = None
    attributes: Any = None
    input_push_token: Any = None
    alert: Any = None
    problems: tuple[str, ...] = ()


def read_live_activity(body: Any, now: float) -> LiveActivityPush:
    """The Live Activity keys of a decoded body, and what a device would not act on."""
    aps = body.get("aps") if isinstance(body, dict) else None
    if not isinstance(aps, dict):
        return LiveActivityPush(None, None, None, problems=("aps: missing or not an object",))
    push = LiveActivityPush(
        event=aps.get("event"),
        timestamp=aps.get("timestamp"),
        content_state=aps.get("content-state"),
        stale_date=aps.get("stale-date"),
        dismissal_date=aps.get("dismissal-date"),
        relevance_score=aps.get("relevance-score"),
        attributes_type=aps.get("attributes-type"),
        attributes=aps.get("attributes"),
        input_push_token=aps.get("input-push-token"),
        alert=aps.get("alert"),
    )
    return replace(push, problems=tuple(_live_activity_problems(push, aps, now)))


def _live_activity_problems(push: LiveActivityPush, aps: dict[str, Any], now: float) -> list[str]:
    problems = []
    if push.event not in LIVE_ACTIVITY_EVENTS:
        problems.append("aps.event: must be start, update or end")
    if not _is_int(push.timestamp):
        problems.append("aps.timestamp: required, integer epoch seconds")
    elif push.timestamp > now + LIVE_ACTIVITY_MAX_FUTURE_SECONDS:
        problems.append("aps.timestamp: more than 8 hours ahead (milliseconds instead of seconds?)")
    if push.content_state is not None and not isinstance(push.content_state, dict):
        problems.append("aps.content-state: must be an object (the activity's ContentState)")
    elif push.content_state is None and push.event in ("start", "update"):
        problems.append(f"aps.content-state: required to {push.event} an activity")
    for key in ("stale-date", "dismissal-date"):
        if key in aps and not _is_int(aps[key]):
            problems.append(f"aps.{key}: must be integer epoch seconds")
    if "relevance-score" in aps and not _is_number(aps["relevance-score"]):
        problems.append("aps.relevance-score: must be a number")
    if push.event == "start":
        if not isinstance(push.attributes_type, str) or not push.attributes_type:
            problems.append("aps.attributes-type: required to start an activity")
        if not isinstance(push.attributes, dict):
            problems.append("aps.attributes: required (an object) to start an activity")
        if push.alert is None:
            problems.append("aps.alert: required to start an activity")
    alert = push.alert
    if alert is not None and not (isinstance(alert, dict) and ("title" in alert or "body" in alert)):
        problems.append("aps.alert: must be an object with a title or body")
    if "sound" in aps:
        # Apple's Live Activity alert is one key holding title, body and sound (ActivityKit's AlertConfiguration).
        problems.append("aps.sound: a Live Activity alert's sound goes in aps.alert")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
