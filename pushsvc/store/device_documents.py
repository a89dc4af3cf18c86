"""A device document as the `devices` collection holds it, and the records read from it: what the dispatcher
needs (`Recipient`), what the API shows (`Device`), and the fields a registration writes.

nx-27017 stores booleans written with `$set` as 0/1 and MongoDB stores dates as datetimes: `stored_bool` and
`epoch_of` read either.

A device whose user changes keeps when it did (`user_changes`, see `user_as_of`): a campaign sent in waves over
hours (best-time delivery) judges each device by its user at the campaign's time, which later registrations
cannot change, so a login during the campaign neither sends the phone twice nor leaves it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pushsvc.device_contract import Device
from pushsvc.model import Recipient, WebSubscription
from pushsvc.token_kinds import default_kind


def kind_of(doc: Mapping[str, Any]) -> str:
    """The device's token kind; documents from before kinds have their platform's default."""
    return doc.get("kind") or default_kind(doc.get("platform", "")) or ""


def to_recipient(doc: dict) -> Recipient:
    return Recipient(
        app=doc["app"],
        token=doc["token"],
        platform=doc["platform"],
        locale=doc.get("locale"),
        timezone=doc.get("timezone"),
        user_id=doc.get("user_id"),
        kind=kind_of(doc),
        subscription=subscription_of(doc),
        activity_id=doc.get("activity_id"),
    )


def subscription_of(doc: Mapping[str, Any]) -> WebSubscription | None:
    stored = doc.get("subscription")
    if not stored:
        return None
    keys = stored.get("keys") or {}
    return WebSubscription(str(stored["endpoint"]), str(keys.get("p256dh", "")), str(keys.get("auth", "")))


def subscription_fields(subscription: WebSubscription | None) -> dict[str, Any] | None:
    """A subscription as stored and shown: the PushSubscription JSON shape browsers give."""
    if subscription is None:
        return None
    return {"endpoint": subscription.endpoint, "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}


def read_device(doc: Mapping[str, Any]) -> Device:
    """A stored device as the typed record the API shows: read once here, so no caller sees stored types."""
    registered_at = doc.get("registered_at")
    return Device(
        app=str(doc["app"]),
        token=str(doc["token"]),
        platform=str(doc["platform"]),
        kind=kind_of(doc),
        user_id=doc.get("user_id"),
        tags=tuple(doc.get("tags") or ()),
        locale=doc.get("locale"),
        timezone=doc.get("timezone"),
        app_version=doc.get("app_version"),
        opt_out=tuple(doc.get("opt_out") or ()),
        subscription=subscription_of(doc),
        activity_id=doc.get("activity_id"),
        id=str(doc["_id"]),
        active=stored_bool(doc.get("active"), default=True),
        deactivated_reason=doc.get("deactivated_reason"),
        registered_at=None if registered_at is None else epoch_of(registered_at),
    )


def stored_bool(value: object, default: bool) -> bool:
    """A boolean field as stored. MongoDB gives back the bool written; nx-27017 (the test database) stores a
    boolean written with `$set` as the integer 0/1 (an insert keeps it a bool): this is the one place that
    tells them apart, so an API answer never shows `1` where it documents `true`. A missing field (a device
    from before the field) is `default`."""
    if value is None:
        return default
    return bool(value)


def epoch_of(value: float | datetime) -> float:
    """A stored time as epoch seconds: pushsvc writes floats; a BSON date (a document written by hand or
    another tool) is read as its epoch."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.timestamp()
    return float(value)


def stored_fields(device: Device, now: float) -> dict[str, Any]:
    return {
        "platform": device.platform,
        "kind": device.kind or default_kind(device.platform),
        # Every registration, new or repeated: a provider's "invalid" answer about the token as it was before
        # must not deactivate it now (see deactivate).
        "registered_at": now,
        "user_id": device.user_id,
        "tags": list(device.tags),
        "locale": device.locale,
        "timezone": device.timezone,
        "app_version": device.app_version,
        "opt_out": list(device.opt_out),
        "subscription": subscription_fields(device.subscription),
        "activity_id": device.activity_id,
        "active": True,
        "deactivated_reason": None,
        "deactivated_at": None,
        "updated_at": now,
    }


# The user changes a device keeps: a campaign's waves need the user at its time, at most a week and a day back
# (scheduling/best_time.py KEEP_SECONDS); a device that changed user more often than this in that time is
# judged by the oldest change kept.
USER_CHANGES_KEPT = 16


class UserChange(NamedTuple):
    """From `at` (epoch seconds) on, the device was `user`'s (None: nobody's)."""

    at: float
    user: str | None


def user_changes(doc: Mapping[str, Any]) -> list[UserChange]:
    """A device's recorded user changes, oldest first (none: its user never changed)."""
    return [UserChange(float(c["at"]), c.get("user")) for c in doc.get("user_changes") or ()]


def changed_user(before: Mapping[str, Any], user: str | None, now: float) -> list[dict[str, Any]]:
    """`user_changes` as stored after `before`'s user becomes `user` at `now`: a device changing for the first
    time records its first user too, from time 0 (since it was created: `user_as_of` judges a device created
    after a time by its first user either way)."""
    kept = user_changes(before) or [UserChange(0.0, before.get("user_id"))]
    kept = [*kept, UserChange(now, user)][-USER_CHANGES_KEPT:]
    return [{"at": c.at, "user": c.user} for c in kept]


def user_as_of(doc: Mapping[str, Any], at: float) -> str | None:
    """The device's user at `at`: the last change by then. A device created after `at` is judged by its first
    user, so the answer never changes once any wave could have sent it."""
    changes = user_changes(doc)
    if not changes:
        return doc.get("user_id")
    then = [c for c in changes if c.at <= at]
    return (then[-1] if then else changes[0]).user
