"""A push request as a whole: `PushRequest`, `parse_request` (the request contract's entry point), which tokens
it is for (its route), and the Live Activity timestamp intake stamps on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import MAX_ID_LENGTH, reject_unknown, require_mapping, required_string
from pushsvc.model.message import Message, parse_message
from pushsvc.model.options import Options, parse_options
from pushsvc.model.target import Target, parse_target
from pushsvc.token_kinds import receives

REQUEST_FIELDS = ("id", "app", "target", "message", "options")
REQUIRED_FIELDS = ("id", "app", "target", "message")
MAX_APP_LENGTH = 128


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
        if not receives(kind, self.route):
            return False
        return self.activity_id is None or self.activity_id == activity_id


def route_of(options: Options, message: Message) -> str:
    activity = message.live_activity
    if options.push_type == "liveactivity" and activity is not None and activity.event == "start":
        return "liveactivity_start"
    return options.push_type


def parse_request(obj: Any, known_apps: frozenset[str] | None = None) -> PushRequest:
    """Validate a decoded JSON request and build a PushRequest; raises RequestError naming the field."""
    root = require_mapping(obj, "request")
    reject_unknown(root, "", REQUEST_FIELDS)
    request_id = required_string(root.get("id"), "id", max_length=MAX_ID_LENGTH)
    app = required_string(root.get("app"), "app", max_length=MAX_APP_LENGTH)
    if known_apps is not None and app not in known_apps:
        raise RequestError("app", f"unknown app {app!r}")
    options = parse_options(root.get("options", {}))
    message = parse_message(root.get("message"), options)
    target = parse_target(root.get("target"))
    activity = message.live_activity
    if activity is not None and activity.event != "start" and not target.tokens and activity.activity_id is None:
        # Every update token of the users would get it, each activity showing another's state.
        raise RequestError(
            "message.live_activity.activity_id", "required to update or end an activity of users or a segment"
        )
    return PushRequest(id=request_id, app=app, target=target, message=message, options=options)


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
