"""When each user opens pushes: the state best-time delivery decides by (scheduling/best_time.py).

State: one document per (app, user) in `open_hours`, keyed like frequency caps (store/caps.py `user_key`: the
app and a SHA-256 of `u:<user id>`, or `t:<token>` for a device without a user; neither is stored in the clear):
`opens`, the user's recorded opens as [at, recorded, receipt key] (epoch seconds; those that may still count for a
campaign, at most MAX_OPENS), a version `v`, and `expire_at` for a TTL index that forgets it once its newest
open can no longer count.

Written by each *recorded* `opened` receipt (a duplicate is never recorded, so never counted twice): read the
users' documents, add the opens in Python, write each conditioned on the version read (a user never seen: an
insert); a write that lost a race is read and done again, as caps do. The version is a random value per write,
so two writers never take the same one (a time-based version let two writers in one millisecond both "win").
Each open carries its receipt's key: a write that applied but reads back as lost (overwritten before the
check) is done again without storing the open twice.

Each round stamps the opens it writes (`recorded`) when it begins and must finish within RECORD_ROUND_SECONDS
(also the server's time limit for it): a campaign counts opens recorded RECORD_MARGIN before its time
(scheduling/best_time.py), so no write stamped before a wave read can land after it. A round that cannot
finish in time gives up: the open is lost to best-time (logged), never counted late.

Erasure (store/erasure.py) leaves a tombstone (`erased`, no opens) rather than nothing: a write that began
before it finds the tombstone on its next round and drops its opens, instead of recreating the erased user's
document. An open whose write begins after the erasure is recorded (over the tombstone) as any other.

Nothing is written on the devices: a best-time wave reads its audience and these documents and decides each
device's hour as of the campaign's time (scheduling/best_time.py), so no device field can disagree with them.
Once a user has MAX_OPENS, a new open is dropped rather than an old one: an open counted for a campaign
already running is never removed by one recorded after it, so the campaign's waves keep deciding alike.

Conditions are equalities on `_id` and `v` only (nx-27017: no `$not`, no array positions in queries).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pymongo
from pymongo import InsertOne, UpdateOne

from pushsvc.scheduling.best_time import KEEP_SECONDS, MAX_OPENS, OPEN_SECONDS, RECORD_MARGIN, Open
from pushsvc.store.caps import user_key
from pushsvc.store.database import Database
from pushsvc.store.device_documents import user_as_of
from pushsvc.store.versioned import all_applied, read_keys

# Rounds of read-add-write for users another writer wrote meanwhile; each round only the contended.
ROUNDS = 8
# A round's read and write must be done this long after its stamp: well within RECORD_MARGIN.
RECORD_ROUND_SECONDS = RECORD_MARGIN / 5
# An erasure's tombstone outlives any write that began before it.
TOMBSTONE_SECONDS = 86400.0


class OpensContended(Exception):
    """Users still contended after ROUNDS rounds."""


class OpensLate(Exception):
    """A round could not be done within RECORD_ROUND_SECONDS of its stamp."""


def person_as_of(doc: Mapping[str, Any], at: float) -> str:
    """Whose opens a device's are (a device document), judged by its user at `at` (device_documents.py
    `user_as_of`): that user's, or the device's own without a user (as caps count)."""
    user = user_as_of(doc, at)
    return f"u:{user}" if user else f"t:{doc['token']}"


class OpenHours:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._collection = database.open_hours

    async def record(self, app: str, opens: Iterable[tuple[str, float, str]], clock: Callable[[], float]) -> None:
        """Add recorded opens ((person, at, receipt key): person `u:<user id>` or `t:<token>`) to their users'
        state, stamped with `clock` (the scheduling clock campaigns' times are on)."""
        new: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for person, at, key in opens:
            new[person].append((at, key))
        by_key = {user_key(app, person): person for person in new}
        pending = sorted(by_key)
        erased_before: set[str] | None = None  # the keys whose first read found an erasure's tombstone
        for _ in range(ROUNDS):
            if not pending:
                return
            now = clock()
            try:
                with pymongo.timeout(RECORD_ROUND_SECONDS):
                    docs = await self._read(pending)
                    if erased_before is None:
                        erased_before = {key for key, doc in docs.items() if doc.get("erased")}
                    # Erased since this write began: its opens went with the user.
                    pending = [k for k in pending if k in erased_before or not docs.get(k, {}).get("erased")]
                    writes, versions = [], {}
                    for key in pending:
                        doc = docs.get(key)
                        versions[key] = version = secrets.token_hex(8)
                        stamped = [Open(at, now, id) for at, id in new[by_key[key]]]
                        writes.append(_write(key, doc, app, keep(_opens(doc), stamped, now), version, now))
                    if clock() - now > RECORD_ROUND_SECONDS:
                        raise OpensLate(f"opens of {len(pending)} users of {app} not written in time")
                    pending = await self._apply(writes, versions)
            except pymongo.errors.PyMongoError as exc:
                if exc.timeout:
                    raise OpensLate(f"opens of {len(pending)} users of {app} not written in time") from None
                raise
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
        return await read_keys(self._database, self._collection, keys, {"opens": 1, "v": 1, "erased": 1})


def keep(stored: Iterable[Open], new: Iterable[Open], now: float) -> list[Open]:
    """The opens that may still count for a campaign whose waves run now (happened less than 30 days before
    KEEP_SECONDS ago): the stored ones, then the new ones not stored yet (by id) while there is room (at most
    MAX_OPENS in all). Only age removes a stored open, so what a running campaign counted stays."""
    since = now - KEEP_SECONDS - OPEN_SECONDS
    kept = [o for o in stored if o.at > since]
    ids = {o.id for o in kept if o.id}
    return (kept + sorted(o for o in new if o.at > since and not (o.id and o.id in ids)))[:MAX_OPENS]


def tombstone(key: str, now: float) -> dict[str, Any]:
    """What an erasure leaves of a user's open hours (see the module's note): no opens, a new version."""
    expire_at = datetime.fromtimestamp(now + TOMBSTONE_SECONDS, UTC)
    return {"_id": key, "v": secrets.token_hex(8), "opens": [], "erased": True, "expire_at": expire_at}


def _opens(doc: Mapping[str, Any] | None) -> list[Open]:
    if not doc:
        return []
    return [Open(float(o[0]), float(o[1]), str(o[2]) if len(o) > 2 else "") for o in doc.get("opens") or ()]


def _write(
    key: str, doc: Mapping[str, Any] | None, app: str, opens: list[Open], version: str, now: float
) -> InsertOne | UpdateOne:
    newest = max((o.at for o in opens), default=now)
    fields = {
        "app": app,
        "erased": False,
        "opens": [[o.at, o.recorded, o.id] for o in opens],
        "expire_at": datetime.fromtimestamp(max(newest, now) + OPEN_SECONDS + KEEP_SECONDS, UTC),
    }
    if doc is None:
        return InsertOne({"_id": key, "v": version, **fields})
    return UpdateOne({"_id": {"$eq": key}, "v": {"$eq": doc.get("v")}}, {"$set": {**fields, "v": version}})

