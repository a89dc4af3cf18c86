"""Frequency caps: at most N capped pushes per user in each rolling window, held across replicas and restarts.

State: one document per (app, user) in `frequency`: `sends`, the user's last capped pushes newest first as
{"n": notification id, "t": epoch seconds}, never longer than the largest cap (O(1) per user), a version `v`,
and `expire_at` for a TTL index that forgets it once even the longest window is over.

Admission is optimistic, per chunk: read the chunk's users, decide in Python (a user has room when, for every
limit, fewer than `max` of its sends fall inside the window), and write each admitted user's new `sends` with
the version read as the condition (a user never seen: an insert, the `_id` being the condition). A replica
that raced for the same user finds its write unmatched (or a duplicate key), reads that user again and decides
anew, so the last slot goes once. A notification counted for a user already (another of their devices in
another chunk, a chunk repeated after a crash) is admitted again without counting. A push is counted when
admitted, before it is sent: a crash in between costs the user a slot, never an extra push.

Conditions are equalities on `_id` and `v` only: nx-27017 implements neither `$not` nor array positions in
queries, which a single conditional upsert would need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, UpdateOne

from pushsvc.config import FrequencyCapSettings
from pushsvc.model import PushRequest, Recipient
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.store.database import Database
from pushsvc.store.versioned import all_applied, read_keys

# Rounds of read-decide-write for the users another replica wrote meanwhile; each round only the contended.
ROUNDS = 8


class CapsContended(Exception):
    """Users still contended after ROUNDS rounds (the chunk is retried like a failed read)."""


class FrequencyCaps:
    def __init__(self, database: Database, caps: Mapping[str, FrequencyCapSettings]) -> None:
        self._database = database
        self._collection = database.frequency
        self._caps = {app: settings for app, settings in caps.items() if settings.limits}

    def applies(self, request: PushRequest) -> bool:
        """Whether `request` counts against its app's caps: a campaign unless its category is exempt, any
        request whose category is listed as capped. A dry run changes nothing, caps included."""
        caps = self._caps.get(request.app)
        if caps is None or request.options.dry_run:
            return False
        category = request.message.category
        if category is not None and category in caps.exempt_categories:
            return False
        return request.id.startswith(CAMPAIGN_PREFIX) or (category is not None and category in caps.categories)

    async def admit(self, app: str, notification_id: str, users: Iterable[str], now: float) -> set[str]:
        """Count this notification for each of `users` that has room in every window; returns those that have
        not (capped)."""
        caps = self._caps[app]
        by_key = {user_key(app, user): user for user in users}
        pending, capped = sorted(by_key), set()
        for _ in range(ROUNDS):
            if not pending:
                return capped
            docs = await self._read(pending)
            writes, written = [], []
            for key in pending:
                doc = docs.get(key)
                sends = list(doc.get("sends") or ()) if doc is not None else []
                if any(send.get("n") == notification_id for send in sends):
                    continue  # counted before: admitted
                if not has_room(sends, caps, now):
                    capped.add(by_key[key])
                    continue
                writes.append(_write(key, doc, app, [{"n": notification_id, "t": now}, *sends], caps, now))
                written.append(key)
            pending = await self._apply(writes, written, notification_id)
        raise CapsContended(f"{len(pending)} users of {app} still contended")

    async def _apply(self, writes: list[Any], keys: list[str], notification_id: str) -> list[str]:
        """Write; returns the keys whose write lost a race (to be decided again)."""
        if await all_applied(self._collection, writes):
            return []
        # Some write met another replica's first: the users whose document does not hold this notification.
        docs = await self._read(keys)
        return [k for k in keys if not any(s.get("n") == notification_id for s in docs.get(k, {}).get("sends") or ())]

    async def _read(self, keys: Sequence[str]) -> dict[str, dict]:
        return await read_keys(self._database, self._collection, keys, {"sends": 1, "v": 1})


def has_room(sends: Sequence[Mapping[str, Any]], caps: FrequencyCapSettings, now: float) -> bool:
    """Whether one more push fits every limit: fewer than `max` sends inside each window."""
    for limit in caps.limits:
        since = now - limit.window_hours * 3600
        if sum(1 for send in sends if float(send.get("t", 0.0)) > since) >= limit.max:
            return False
    return True


def _write(
    key: str, doc: Mapping[str, Any] | None, app: str, sends: list[dict], caps: FrequencyCapSettings, now: float
) -> InsertOne | UpdateOne:
    """The conditional write of a user's new sends: an insert for a user never seen (a race is a duplicate key),
    else an update on the version read (a race matches nothing)."""
    keep = max(limit.max for limit in caps.limits)
    longest = max(limit.window_hours for limit in caps.limits) * 3600
    fields = {"app": app, "sends": sends[:keep], "expire_at": datetime.fromtimestamp(now + longest, UTC)}
    if doc is None:
        return InsertOne({"_id": key, "v": 1, **fields})
    version = int(doc.get("v") or 0)
    return UpdateOne({"_id": {"$eq": key}, "v": {"$eq": version}}, {"$set": {**fields, "v": version + 1}})


def user_key(app: str, user: str) -> str:
    """"<app>:<SHA-256 of the identity>": no user id or device token is stored in the clear here, or shown in an
    error that quotes a write (app ids hold no ':')."""
    return f"{app}:{hashlib.sha256(user.encode()).hexdigest()[:32]}"


def identity(device: Recipient) -> str:
    """Who a device's pushes count for: its user, or the device itself."""
    return f"u:{device.user_id}" if device.user_id else f"t:{device.token}"
