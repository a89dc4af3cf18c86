"""The `receipts` collection: one document per (notification, device, event), so a repeated receipt is
absorbed, and the funnel counters a new one adds to its notification (store/funnel.py).

A receipt document holds no token and no user id: its `_id` is a hash of (notification, device, event), and
it keeps only what the funnel is broken down by. Personal data stays in `devices` and `notifications`, where
erasure and retention already reach it; a receipt expires `retention.notification_days` after it was
recorded (TTL index).

Counting is at most once: the counters are incremented after the insert that makes a receipt new, so a
repeat (a retried batch, a concurrent copy) never counts twice; a failure between the insert and the `$inc`
loses that receipt's count (the retry finds it recorded).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from pushsvc.model.variants import Split, groups_of
from pushsvc.store.database import Database, duplicate_keys, first_reply
from pushsvc.store.devices import DeviceStore
from pushsvc.store.funnel import MIXED, increments, locale_value, platform_value
from pushsvc.store.notifications import DEFAULT_RETENTION_SECONDS, expiry, notification_key
from pushsvc.store.open_hours import OpenHours


@dataclass(frozen=True)
class NotificationRef:
    """What a receipt needs of the notification it names."""

    key: str  # `_id`: `<app>:<request id>`, also the Kafka key of its events
    request_id: str
    app: str
    created_at: float
    # A campaign's A/B split (model/variants.py): a receipt is also counted by the variant its device was in.
    split: Split | None = None


@dataclass(frozen=True)
class NewReceipt:
    """A receipt as recorded: its idempotency key and what the funnel and the receipt event need."""

    key: str
    notification: NotificationRef
    event: str
    at: float
    # The breakdown values (store/funnel.py): {"platform": "ios", "locale": "fr"}.
    dimensions: Mapping[str, str]
    # An "opened" also records the device's "received" (a device cannot open what it did not receive, and
    # Android apps often cannot report receipt while killed): such a receipt is `implied`.
    implied: bool = False


@dataclass(frozen=True)
class DeviceOf:
    """What a receipt learns of the device (or user) it names."""

    dimensions: dict[str, str]
    identity: str  # as dispatch assigns variants: the user id, or the token of a device without one
    # Whose opens these are (store/open_hours.py, as caps count pushes): `u:<user id>`, or `t:<token>` alone.
    person: str


def receipt_key(notification: str, device: str, event: str) -> str:
    """The `_id`: a hash, so neither the token nor the user id is stored, and any length fits the index."""
    return hashlib.sha256(f"{notification}\x00{device}\x00{event}".encode()).hexdigest()


def dimensions_of(devices: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The breakdown values of the devices a receipt names: one device's (a token), or a user's devices' when
    they agree, "mixed" where they differ (a user_id receipt counts once per user, not per device)."""
    platforms = {platform_value(d.get("platform")) for d in devices}
    locales = {locale_value(d.get("locale")) for d in devices}
    return {
        "platform": platforms.pop() if len(platforms) == 1 else MIXED,
        "locale": locales.pop() if len(locales) == 1 else MIXED,
    }


def _device_of(field: str, value: str, docs: Sequence[Mapping[str, Any]]) -> DeviceOf:
    user = value if field == "user_id" else docs[0].get("user_id")
    identity = str(user or value)
    return DeviceOf(dimensions_of(docs), identity, f"u:{user}" if user else f"t:{value}")


class ReceiptStore:
    def __init__(
        self, database: Database, devices: DeviceStore, retention_seconds: float = DEFAULT_RETENTION_SECONDS
    ) -> None:
        self._database = database
        self._collection = database.receipts
        self._notifications = database.notifications
        self._devices = devices
        self._retention = retention_seconds
        # Recorded opens feed best-time delivery (scheduling/best_time.py).
        self.opens = OpenHours(database)

    async def notifications(self, app: str, request_ids: Sequence[str]) -> dict[str, NotificationRef]:
        """The notifications of `app` among `request_ids`, by request id; another app's, or none, are left out
        (ids are per app: another app's notification is simply not found)."""
        keys = {notification_key(app, r): r for r in dict.fromkeys(request_ids)}
        projection = {"app": 1, "request_id": 1, "created_at": 1, "variants": 1, "control_percent": 1}
        query: dict[str, Any] = {"app": {"$eq": app}}
        docs: list[dict]
        if self._database.reads_each(len(keys)):
            # nx-27017 scans for `$in` (store/devices.py _find_values): one point lookup per notification.
            found = await asyncio.gather(
                *(self._notifications.find_one({**query, "_id": {"$eq": k}}, projection) for k in keys)
            )
            docs = [d for d in found if d is not None]
        else:
            docs = await first_reply(self._notifications, {**query, "_id": {"$in": list(keys)}}, len(keys), projection)
        return {
            keys[d["_id"]]: NotificationRef(
                d["_id"], keys[d["_id"]], app, float(d.get("created_at") or 0.0),
                groups_of(keys[d["_id"]], d.get("variants"), d.get("control_percent")),
            )
            for d in docs
            if d["_id"] in keys
        }

    async def devices(self, app: str, field: str, values: Sequence[str]) -> dict[str, DeviceOf]:
        """Per token or user id of `app` that has a device (active or not): its breakdown values, and whom its
        pushes were assigned by (a campaign's variant: the user, or the device without one)."""
        if not values:
            return {}
        found: dict[str, list[dict]] = {}
        for doc in await self._devices.lookup(app, field, list(dict.fromkeys(values))):
            found.setdefault(str(doc.get(field)), []).append(doc)
        return {value: _device_of(field, value, docs) for value, docs in found.items()}

    async def record(self, receipts: Sequence[NewReceipt], now: float) -> set[str]:
        """Insert `receipts` (keys unique within the call) in one round trip; returns the keys that are new.
        The rest were recorded before (a repeat, or a concurrent copy that won the insert)."""
        if not receipts:
            return set()
        expire_at = expiry(now, self._retention)
        documents = [
            {
                "_id": r.key,
                "notification": r.notification.key,
                "app": r.notification.app,
                "event": r.event,
                "at": r.at,
                "recorded_at": now,
                **dict(r.dimensions),
                **({"implied": True} if r.implied else {}),
                "expire_at": expire_at,
            }
            for r in receipts
        ]
        keys = [r.key for r in receipts]
        try:
            await self._collection.insert_many(documents, ordered=False)
            return set(keys)
        except BulkWriteError as exc:
            # Anything but a repeat raises: nothing else is expected of these small documents (the caller
            # retries, 503).
            failed = set(duplicate_keys(exc))
            return {k for n, k in enumerate(keys) if n not in failed}

    async def count(self, receipts: Sequence[NewReceipt]) -> None:
        """Add new receipts to their notifications' funnels: one `$inc` per notification (bulk)."""
        per_notification: dict[str, dict[str, int]] = {}
        for r in receipts:
            inc = per_notification.setdefault(r.notification.key, {})
            for path, n in increments(r.event, r.dimensions).items():
                inc[path] = inc.get(path, 0) + n
        if per_notification:
            # No upsert: a notification deleted by retention meanwhile stays deleted.
            await self._notifications.bulk_write(
                [UpdateOne({"_id": key}, {"$inc": inc}) for key, inc in per_notification.items()], ordered=False
            )
