"""What an APNs request carries for one delivery, by push type: the JSON body, the topic, the priority, the expiry.

Kept apart from the transport (apns.py) so each push type's rules sit in one small builder that a reader can check
against Apple's documentation line by line, and that intake (ingest/payload_limits.py) reuses to measure bodies.

Sources: "Sending notification requests to APNs" (headers), "Generating a remote notification" (payload keys and
the 4 KB / 5 KB limits), "Starting and updating Live Activities with ActivityKit push notifications" (Live
Activities).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from pushsvc.model import LiveActivity, Message, Options
from pushsvc.providers.base import Delivery

MAX_PAYLOAD_BYTES = 4096  # every push type but VoIP, Live Activities included; Apple answers 413 above it
MAX_VOIP_PAYLOAD_BYTES = 5120  # Apple's larger limit for VoIP pushes
# Apple: a Live Activity push goes to "<bundle id>.push-type.liveactivity"; a PushKit push to "<bundle id>.voip".
# A token is only valid on its own topic (DeviceTokenNotForTopic otherwise).
LIVE_ACTIVITY_TOPIC_SUFFIX = ".push-type.liveactivity"
VOIP_TOPIC_SUFFIX = ".voip"


def payload_limit(push_type: str) -> int:
    return MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES


def topic_for(app_topic: str, push_type: str) -> str:
    """apns-topic: the app's bundle id, with the suffix of the push types that have their own topic."""
    if push_type == "voip":
        return app_topic + VOIP_TOPIC_SUFFIX
    if push_type == "liveactivity":
        return app_topic + LIVE_ACTIVITY_TOPIC_SUFFIX
    return app_topic


def priority_for(options: Options) -> str:
    """apns-priority: 10 sends at once, 5 when the device's power allows.

    VoIP is always 10 (Apple: a call can't wait). A Live Activity push takes the request's priority: Apple lets
    any event go at 5 or 10 and meters 10s against the device's Live Activity budget ("Determine the update
    frequency"), so frequent updates should ask for normal; a high-priority alert lights the screen at once.
    """
    return "10" if options.push_type == "voip" or options.priority == "high" else "5"


def expiration_header(delivery: Delivery) -> str | None:
    """apns-expiration: "0" = try once, store nothing; epoch seconds; None = omit (Apple's default)."""
    ttl = delivery.options.ttl_seconds
    if ttl == 0:
        return "0"
    if delivery.expires_at is not None:
        return str(int(delivery.expires_at))
    if ttl is not None:  # no request time known: count from now
        return str(int(time.time()) + ttl)
    return None


def embeds_send_time(delivery: Delivery) -> bool:
    """Whether the body holds the moment it is sent (a Live Activity push without its own timestamp)."""
    activity = delivery.message.live_activity
    return delivery.options.push_type == "liveactivity" and activity is not None and activity.timestamp is None


def build_payload(delivery: Delivery, now: int | None = None) -> bytes:
    """The JSON body: ``aps`` for the push type, plus message.data as custom top-level keys (JSON types kept).

    `now` (epoch seconds) is the send time a Live Activity push without a timestamp carries; None: the clock's.
    """
    return build_body(delivery.message, delivery.options, delivery.device.locale, now)


def build_body(message: Message, options: Options, locale: str | None, now: int | None = None) -> bytes:
    """build_payload's body for a device of `locale`: all the body depends on (intake measures it with this,
    without a delivery to build)."""
    builder = _APS.get(options.push_type)
    if builder is None:  # the contract knows no other push type; a ValueError is what callers classify
        raise ValueError(f"no APNs payload for push type {options.push_type!r}")
    aps = builder(message, locale, int(time.time()) if now is None else now)
    body: dict[str, Any] = {"aps": aps}
    body.update((key, value) for key, value in message.data.items() if key != "aps")  # never overwrite aps
    # orjson, as for the other providers: compact UTF-8 (every byte counts against the 4096-byte limit), and ~20x
    # faster than json.dumps, which was ~2.5 us of intake's size check and again of the send. What it refuses
    # (integers beyond 64 bits: TypeError) or would write as null (NaN, infinities) the contract refuses at
    # intake (model/message.py, model/live_activity.py), so a valid request's body is what json gave, but for the
    # form of some floats (1e-07 is written 1e-7, 1e-05 0.00001: up to 2 bytes more or less each). Intake
    # measures with this same encoder; a request stored before this change with such floats, within a few bytes
    # of its limit, could now be refused as too large, device by device.
    return orjson.dumps(body)


# ------------------------------------------------------------------------------------------ per push type


def _alert_aps(message: Message, locale: str | None, now: int) -> dict[str, Any]:
    aps: dict[str, Any] = {}
    alert = _alert_text(message, locale)
    if alert:
        aps["alert"] = alert
    if message.badge is not None:
        aps["badge"] = message.badge
    if message.sound:
        aps["sound"] = message.sound
    if message.category:
        aps["category"] = message.category
    if message.thread_id:
        aps["thread-id"] = message.thread_id
    if message.mutable_content:
        aps["mutable-content"] = 1
    return aps


def _background_aps(message: Message, locale: str | None, now: int) -> dict[str, Any]:
    # A background push must not alert, badge or play a sound, or Apple treats it as an alert.
    return {"content-available": 1}


def _voip_aps(message: Message, locale: str | None, now: int) -> dict[str, Any]:
    # PushKit hands the whole payload to the app (which reports the call to CallKit): data only.
    return {}


def _live_activity_aps(message: Message, locale: str | None, now: int) -> dict[str, Any]:
    """An ActivityKit push. Apple's keys: event and timestamp always; content-state (the ContentState as JSON) for
    start and update, and for an end that shows a final state; attributes-type and attributes to start one."""
    activity = message.live_activity
    if activity is None:  # the contract requires it with this push type (model.live_activity.parse_live_activity)
        raise ValueError("a liveactivity push without message.live_activity")
    aps: dict[str, Any] = {
        # The device ignores a push older than the state it shows, so this is when the state was current; the
        # contract's default is the send time (a retry is sent anew, and then carries the time of the retry).
        "timestamp": now if activity.timestamp is None else activity.timestamp,
        "event": activity.event,
    }
    if activity.content_state is not None:
        aps["content-state"] = activity.content_state
    _put_dates(aps, activity)
    if activity.event == "start":
        aps["attributes-type"] = activity.attributes_type
        aps["attributes"] = activity.attributes
        # Ask the system for the new activity's own push token (the app registers it as an apns_liveactivity
        # token): without one, an activity started by push could never be updated or ended by push.
        aps["input-push-token"] = 1
    alert = _alert_text(message, locale)
    if alert:
        # A Live Activity alert (ActivityKit's AlertConfiguration: title, body, sound) carries its sound inside
        # "alert", not beside it as a regular notification does.
        if message.sound:
            alert["sound"] = message.sound
        aps["alert"] = alert
    return aps


def _put_dates(aps: dict[str, Any], activity: LiveActivity) -> None:
    if activity.stale_date is not None:
        aps["stale-date"] = activity.stale_date  # the system marks the activity out of date from then on
    if activity.dismissal_date is not None:
        aps["dismissal-date"] = activity.dismissal_date  # end only: when to remove it (default: up to 4 hours)
    if activity.relevance_score is not None:
        aps["relevance-score"] = activity.relevance_score  # which activity the Dynamic Island shows first


def _alert_text(message: Message, locale: str | None) -> dict[str, Any]:
    """Title and body for the device's locale, the keys left out that have no text."""
    text = message.text_for(locale)
    return {key: value for key, value in (("title", text.title), ("body", text.body)) if value is not None}


_APS: dict[str, Callable[[Message, str | None, int], dict[str, Any]]] = {
    "alert": _alert_aps,
    "background": _background_aps,
    "voip": _voip_aps,
    "liveactivity": _live_activity_aps,
}
