"""What a device token is for: one row per kind of token, read by registration, targeting and sending.

A token belongs to one route of one provider. An iOS app holds two APNs tokens: a regular one (alerts and
background pushes, on the app's topic) and a PushKit one (VoIP, on ``<topic>.voip``); APNs refuses either on
the other's topic (``DeviceTokenNotForTopic``). An FCM registration token takes every push type: FCM has no
separate VoIP route and sends VoIP as a high-priority data message; neither has Huawei Push Kit (hms), whose
tokens take VoIP the same way. A Live Activity has its own tokens: a per-activity update token (updates and
the end) and a push-to-start token (starts one). A Web Push subscription (webpush) takes alerts only.
A provider is one more row here plus its adapter in providers/, not another branch in the code that reads it.

Tokens are chosen by *route*: the push type, except that a Live Activity's start goes to push-to-start tokens
(model.PushRequest.route).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenKind:
    name: str
    # The provider adapter that sends to it (the key in providers/registry.py).
    provider: str
    # Device platforms a token of this kind can be registered for.
    platforms: frozenset[str]
    # Routes (model.PushRequest.route: the push type, or liveactivity_start) sent to tokens of this kind.
    push_types: frozenset[str]
    # The platforms for which a registration without `kind` means this one (and so do device documents
    # written before kinds existed).
    default_for: frozenset[str] = frozenset()


KINDS: dict[str, TokenKind] = {
    kind.name: kind
    for kind in (
        TokenKind(
            "apns", "apns", frozenset({"ios"}), frozenset({"alert", "background"}), default_for=frozenset({"ios"})
        ),
        TokenKind("apns_voip", "apns", frozenset({"ios"}), frozenset({"voip"})),
        # A Live Activity's update token: registered with its activity id, takes its updates and its end.
        TokenKind("apns_liveactivity", "apns", frozenset({"ios"}), frozenset({"liveactivity"})),
        # A push-to-start token (per app and activity type, iOS 17.2+): takes the start of an activity.
        TokenKind("apns_pushtostart", "apns", frozenset({"ios"}), frozenset({"liveactivity_start"})),
        TokenKind(
            "fcm",
            "fcm",
            frozenset({"android"}),
            frozenset({"alert", "background", "voip"}),
            default_for=frozenset({"android"}),
        ),
        TokenKind(
            "hms",
            "hms",
            frozenset({"huawei"}),
            frozenset({"alert", "background", "voip"}),
            default_for=frozenset({"huawei"}),
        ),
        # Alerts only: browsers subscribe with userVisibleOnly, so a "silent" push would still show a notification.
        TokenKind("webpush", "webpush", frozenset({"web"}), frozenset({"alert"}), default_for=frozenset({"web"})),
    )
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)
_DEFAULTS: dict[str, str] = {platform: kind.name for kind in KINDS.values() for platform in kind.default_for}


def default_kind(platform: str) -> str | None:
    """The kind a device of this platform has when none was given (None for an unknown platform)."""
    return _DEFAULTS.get(platform)


def kinds_for_platform(platform: str) -> tuple[str, ...]:
    return tuple(name for name, kind in KINDS.items() if platform in kind.platforms)


def kinds_for_push_type(push_type: str) -> tuple[str, ...]:
    """The kinds a push of this route is sent to (alert: apns + fcm + hms + webpush; voip: apns_voip + fcm + hms)."""
    return tuple(name for name, kind in KINDS.items() if push_type in kind.push_types)


def receives(kind: str, push_type: str) -> bool:
    entry = KINDS.get(kind)
    return entry is not None and push_type in entry.push_types


def provider_for(kind: str) -> str | None:
    entry = KINDS.get(kind)
    return None if entry is None else entry.provider
