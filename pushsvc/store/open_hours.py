"""When each user opens pushes: the state best-time delivery decides by (scheduling/best_time.py).

State: one document per (app, user) in `open_hours`, keyed like frequency caps (store/caps.py `user_key`: the
app and a SHA-256 of `u:<user id>`, or `t:<token>` for a device without a user; neither is stored in the clear):
`opens`, the user's recorded opens as [at, recorded] pairs (epoch seconds; those that may still count for a
campaign, at most MAX_OPENS), a version `v`, and `expire_at` for a TTL index that forgets it once its newest
open can no longer count.

Written by each *recorded* `opened` receipt (a duplicate is never recorded, so never counted twice): read the
users' documents, add the opens in Python, write each conditioned on the version read (a user never seen: an
insert); a write that lost a race is read and done again, as caps do. The version is a random value per write,
so two writers never take the same one (a time-based version let two writers in one millisecond both "win").

Nothing is written on the devices: a best-time wave reads its audience and these documents and decides each
device's hour as of the campaign's time (scheduling/best_time.py), so no device field can disagree with them.
Once a user has MAX_OPENS, a new open is dropped rather than an old one: an open counted for a campaign
already running is never removed by one recorded after it, so the campaign's waves keep deciding alike.

Conditions are equalities on `_id` and `v` only (nx-27017: no `$not`, no array positions in queries).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, UpdateOne

from pushsvc.scheduling.best_time import KEEP_SECONDS, MAX_OPENS, OPEN_SECONDS, Open
from pushsvc.store.caps import user_key
from pushsvc.store.database import Database
from pushsvc.store.versioned import all_applied, read_keys

# Rounds of read-add-write for users another writer wrote meanwhile; each round only the contended.
ROUNDS = 8


class OpensContended(Exception):
    """Users still contended after ROUNDS rounds."""


def person_of(doc: Mapping[str, Any]) -> str:
    """Whose opens a device's are (a device document): its user's, or its own without a user (as caps count)."""
    return f"u:{doc['user_id']}" if doc.get("user_id") else f"t:{doc['token']}"


class OpenHours:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._collection = database.open_hours

    async def record(self, app: str, opens: Iterable[tuple[str, float]], now: float) -> None:
        """Add recorded opens ((person, at): person `u:<user id>` or `t:<token>`) to their users' state."""
        new: dict[str, list[Open]] = defaultdict(list)
        for person, at in opens:
            new[person].append(Open(at, now))
        by_key = {user_key(app, person): person for person in new}
        pending = sorted(by_key)
        for _ in range(ROUNDS):
            if not pending:
                break
            docs = await self._read(pending)
            writes, versions = [], {}
            for key in pending:
                doc = docs.get(key)
                versions[key] = version = secrets.token_hex(8)
                writes.append(_write(key, doc, app, keep(_opens(doc), new[by_key[key]], now), version, now))
            pending = await self._apply(writes, versions)
        if pending:
            raise OpensContended(f"{len(pending)} users of {app} still contended")

    async def read(self, app: str, persons: Iterable[str]) -> dict[str, list[Open]]:
        """The recorded opens of each of `persons` that has any."""
        by_key = {user_key(app, person): person for person in persons}
        docs = await self._read(sorted(by_key))
        return {by_key[key]: _opens(doc) for key, doc in docs.items()}

    async def _apply(self, writes: list[Any], versions: Mapping[str, str]) -> list[str]:
        """Write; returns the keys whose write lost a race (to be done again)."""
        if await all_applied(self._collection, writes):
            return []
        docs = await self._read(list(versions))
        return [key for key, version in versions.items() if docs.get(key, {}).get("v") != version]

    async def _read(self, keys: Sequence[str]) -> dict[str, dict]:
        return await read_keys(self._database, self._collection, keys, {"opens": 1, "v": 1})


def keep(stored: Iterable[Open], new: Iterable[Open], now: float) -> list[Open]:
    """The opens that may still count for a campaign whose waves run now (happened less than 30 days before
    KEEP_SECONDS ago): the stored ones, then the new ones while there is room (at most MAX_OPENS in all). Only
    age removes a stored open, so what a running campaign counted stays."""
    since = now - KEEP_SECONDS - OPEN_SECONDS
    kept = [o for o in stored if o.at > since]
    return (kept + sorted(o for o in new if o.at > since))[:MAX_OPENS]


def _opens(doc: Mapping[str, Any] | None) -> list[Open]:
    if not doc:
        return []
    return [Open(float(pair[0]), float(pair[1])) for pair in doc.get("opens") or ()]


def _write(
    key: str, doc: Mapping[str, Any] | None, app: str, opens: list[Open], version: str, now: float
) -> InsertOne | UpdateOne:
    newest = max((o.at for o in opens), default=now)
    fields = {
        "app": app,
        "opens": [[o.at, o.recorded] for o in opens],
        "expire_at": datetime.fromtimestamp(max(newest, now) + OPEN_SECONDS + KEEP_SECONDS, UTC),
    }
    if doc is None:
        return InsertOne({"_id": key, "v": version, **fields})
    return UpdateOne({"_id": {"$eq": key}, "v": {"$eq": doc.get("v")}}, {"$set": {**fields, "v": version}})

