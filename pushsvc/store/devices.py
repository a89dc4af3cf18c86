"""The `devices` collection: registration, targeting queries in chunks, deactivation of dead tokens.

Every device records what its token is for (`kind`, see pushsvc/token_kinds.py) and when it was last
registered (`registered_at`): targeting picks the kinds a push type is sent to, and deactivation spares a
device registered again after the provider's answer was given.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

# Device is the device contract's record (parse_device builds it; this store writes and reads it).
from pushsvc.device_contract import Device
from pushsvc.model import PushRequest, Target
from pushsvc.store.audience import (
    AudienceCursor,
    active_devices_filter,
    audience_filter,
    between,
    by_token,
    kind_filter,
    registered_no_later_than,
)
from pushsvc.store.database import Database, duplicate_keys
from pushsvc.store.device_documents import changed_user, read_device, stored_fields
from pushsvc.store.erasure import ERASURE_ROUNDS
from pushsvc.token_kinds import KINDS

# Kept in place of a lookup's cursor the server closed (cursor id 0) together with a full page: the next page
# is known to be empty without asking.
_EXHAUSTED = "exhausted"
# Page size of the lookups read whole (a chunk's tokens, a user's devices): usually one server reply.
_LOOKUP_PAGE = 1000
# A user's devices read at once (listing, erasure); far above what one person registers.
USER_DEVICES_LIMIT = 1000
# Rounds of a registration whose device's user another registration keeps changing meanwhile.
_USER_CHANGE_ROUNDS = 8
# A request naming up to this many users or tokens goes to the batch lane (scheduling/lanes.py).
SMALL_LOOKUP = 16
# The marker (in the `migrations` collection) saying backfill_kinds has run on this database.
KIND_BACKFILL = "devices.kind"
# Only what the dispatcher needs travels back from MongoDB.
DISPATCH_PROJECTION = {
    "app": 1,
    "token": 1,
    "platform": 1,
    "locale": 1,
    "timezone": 1,
    "user_id": 1,
    "opt_out": 1,
    "kind": 1,
    "subscription": 1,
    "activity_id": 1,
    # Absent unless the device's user changed: a best-time wave judges it by its user at the campaign's time.
    "user_changes": 1,
}


class Deactivation(NamedTuple):
    """A token a provider called invalid."""

    token: str
    reason: str
    # Deactivate only a device registered at or before this time (epoch seconds; a device registered again
    # since is a fresh registration the answer says nothing about). None: whenever it was registered.
    registered_by: float | None = None


def _same_user(device: Device) -> dict[str, Any]:
    """The device as registered with the same user (or none): the condition of a registration that records no
    user change."""
    return {**_device_key(device.app, device.token), "user_id": {"$eq": device.user_id}}


def _registration(device: Device, now: float) -> dict[str, Any]:
    return {
        "$set": stored_fields(device, now),
        "$setOnInsert": {"app": device.app, "token": device.token, "created_at": now},
    }


def _device_key(app: str, token: str) -> dict[str, Any]:
    """The unique (app, token) lookup; `$eq` spelled out (same meaning) so nx-27017 uses its index too."""
    return {"app": {"$eq": app}, "token": {"$eq": token}}


async def _close(stream: Any) -> None:
    """Close a cursor the server may still hold. One it closed (cursor id 0, or an error) is closed by the
    driver already: skipping the close saves a step on every point lookup."""
    if stream.alive:
        await stream.close()


class DeviceStore:
    def __init__(
        self,
        database: Database,
        clock: Callable[[], float] = time.time,
        schedule_clock: Callable[[], float] | None = None,
    ) -> None:
        self._database = database
        self._collection = database.devices
        # registered_at and deactivation times are compared with the moment a request went out, possibly on
        # another replica: the service passes the database's clock (scheduling/clock.py).
        self._clock = clock
        # A user change's time is compared with campaigns' times: the scheduling clock (the same clock but in
        # tests, which set the scheduling clock alone).
        self._schedule_clock = schedule_clock or clock

    async def upsert(self, device: Device, now: float | None = None) -> tuple[Device, bool]:
        """Register or refresh a device; re-registering a deactivated token reactivates it (`active` set again,
        the deactivation cleared). A device whose user changes records when (device_documents.py
        `changed_user`). Returns (the device as stored, created)."""
        now = self._clock() if now is None else now
        for _ in range(_USER_CHANGE_ROUNDS):
            try:
                # Most registrations repeat the device's user: one write, conditioned on that user so that a
                # change never goes unrecorded (a different user's device fails the insert: a duplicate key).
                result = await self._collection.update_one(_same_user(device), _registration(device, now), upsert=True)
            except DuplicateKeyError:
                if not await self._change_user(device, now):
                    continue  # changed again, or deleted, meanwhile: decide again
                result = None
            doc = await self._collection.find_one(_device_key(device.app, device.token))
            if doc is not None:
                return read_device(doc), result is not None and result.upserted_id is not None
        raise RuntimeError(f"registration of a device of app {device.app!r} did not settle: its user keeps changing")

    async def _change_user(self, device: Device, now: float) -> bool:
        """Give the registered device `device`'s user, recording the change; False if it changed again or was
        deleted between the read and the write."""
        before = await self._collection.find_one(
            _device_key(device.app, device.token), {"user_id": 1, "user_changes": 1}
        )
        if before is None or before.get("user_id") == device.user_id:
            return False  # deleted, or inserted by another registration of the same user: the first write again
        changes = changed_user(before, device.user_id, self._schedule_clock())
        fields = {**stored_fields(device, now), "user_changes": changes}
        condition = {**_device_key(device.app, device.token), "user_id": {"$eq": before.get("user_id")}}
        result = await self._collection.update_one(condition, {"$set": fields})
        return result.matched_count == 1

    async def backfill_kinds(self) -> int:
        """Record `kind` on devices registered before kinds existed (their platform's default), once.

        Idempotent (only documents without `kind` change) and cheap after its first run: a marker says it is
        done, so a restart does not scan the collection again. A device written later without a kind (by a
        replica that predates kinds, during a rolling upgrade) is still targeted right: kind_of() derives the
        same default when it is read. Returns the number of devices changed.
        """
        migrations = self._collection.database["migrations"]
        if await migrations.find_one({"_id": KIND_BACKFILL}) is not None:
            return 0
        changed = 0
        for kind in KINDS.values():
            for platform in sorted(kind.default_for):
                result = await self._collection.update_many(
                    {"kind": {"$eq": None}, "platform": {"$eq": platform}}, {"$set": {"kind": kind.name}}
                )
                changed += result.modified_count
        await migrations.update_one(
            {"_id": KIND_BACKFILL}, {"$set": {"done_at": time.time(), "devices": changed}}, upsert=True
        )
        return changed

    async def _find_all(self, query: dict) -> list[dict]:
        """Every device matching `query` (a lookup by token or user: a few per value), in _id order. One query
        read through its server cursor in pages (_read_page); a cursor lost between two replies is read again
        from the last _id, never taken as the end. Audiences are read differently (find_chunk): this one
        open-ended query would make nx-27017 build a whole audience before its first reply, and sorted by
        token a lookup there runs on the (app, token) index instead of the lookup's own (200 ms, not 1)."""
        docs: list[dict] = []
        stream: Any = None
        after_id: str | None = None
        while True:
            page, stream = await self._read_page(query, after_id, _LOOKUP_PAGE, stream)
            docs.extend(page)
            if stream is None:
                return docs
            after_id = str(page[-1]["_id"])

    async def _find_each(self, query: dict, field: str, values: Sequence[str]) -> list[dict]:
        """One `{field: {$eq: v}}` query per value, concurrently, merged in _id order (duplicates dropped).

        The same result as `{field: {$in: values}}`: for a handful of values these are index point lookups
        on any MongoDB, and the only shape nx-27017 serves from its expression indexes (see audience_filter).
        """
        results = await asyncio.gather(*(self._find_all({**query, field: {"$eq": v}}) for v in dict.fromkeys(values)))
        merged = {doc["_id"]: doc for docs in results for doc in docs}
        return [merged[key] for key in sorted(merged)]

    async def _find_values(self, query: dict, field: str, values: Sequence[str]) -> list[dict]:
        """The devices matching `query` whose `field` is one of `values`, in _id order.

        On MongoDB one `$in` query: an index point lookup per value, one round trip for any number of them.
        nx-27017 answers `$in` by scanning the collection (~260-320 ms of its CPU at 100k devices, whatever the
        count of values) but an equality from its index (~0.5 ms): there, up to POINT_LOOKUPS_UP_TO values go
        as one equality query each, and more as the one scan (benchmarks/store_op_cost.py: the break-even in
        its CPU is ~500-650 values; below it the equalities, sent concurrently, also answer sooner). Chosen
        by `Database.reads_each`, as for every read of a set of ids or values.
        """
        if self._database.reads_each(len(values)):
            return await self._find_each(query, field, values)
        return await self._find_all({**query, field: {"$in": list(dict.fromkeys(values))}})

    async def find_by_tokens(self, app: str, tokens: Sequence[str], route: str) -> list[dict]:
        """The active devices among `tokens` whose kind takes the push type (a regular APNs token named in a
        VoIP push is not one of them: the caller counts it as unknown)."""
        return await self.find_many(app, route, "token", tokens)

    async def find_many(self, app: str, route: str, field: str, values: Sequence[str]) -> list[dict]:
        """The active devices of `app` whose kind takes the push type and whose `field` (token, user_id) is one
        of `values`, in _id order: the devices of many small requests read at once (dispatch/chunks.py)."""
        query: dict[str, Any] = {"app": {"$eq": app}, "active": True, **kind_filter(route, self.exact_kinds)}
        return await self._find_values(query, field, values)

    async def lookup(self, app: str, field: str, values: Sequence[str]) -> list[dict]:
        """The devices of `app`, active or not, whose `field` (token, user_id) is one of `values`: who a
        receipt names (store/receipts.py). Point lookups on nx-27017, one `$in` on MongoDB (_find_values)."""
        return await self._find_values({"app": {"$eq": app}}, field, values)

    async def find_audience(
        self,
        app: str,
        target: Target,
        category: str | None,
        timezones: Sequence[str | None] | None,
        after: AudienceCursor,
        limit: int,
        route: str,
        upto: str | None = None,
        activity_id: str | None = None,
    ) -> list[dict]:
        """Next `limit` devices of a users/segment audience after the cursor, up to token `upto` if given (the
        end of a range: store/ranges.py), see find_chunk."""
        exact = self.exact_kinds
        if target.users and len(target.users) <= SMALL_LOOKUP:
            # Never split into ranges (a few users' devices are one chunk): `upto` is always None here.
            # A few users: their devices read whole (a user has a handful), paged here in the same order.
            base = active_devices_filter(app, category, timezones, route, exact=exact, activity_id=activity_id)
            docs = await self._find_values(base, "user_id", target.users)
            if isinstance(after, str):  # a cursor saved before token order: _id order
                return [d for d in docs if d["_id"] > ObjectId(after)][:limit]
            docs.sort(key=by_token)
            if after is not None:
                docs = [d for d in docs if d["token"] > after["token"]]
            return docs[:limit]
        query = audience_filter(app, target, category, timezones, route, exact=exact, activity_id=activity_id)
        return await self.find_chunk(query, after, limit, upto)

    @property
    def exact_kinds(self) -> bool:
        """Whether reads name the token kinds a route takes exactly (`$in`), or, on nx-27017 only, leave out
        the most numerous other kind (`$ne`) and let `takes` drop the rest: see kind_filter."""
        return not self._database.scans_for_in

    def audience_query(self, request: PushRequest) -> dict:
        """The whole audience of a users or segment request, every timezone, as this store reads it."""
        return audience_filter(
            request.app, request.target, request.message.category, None, request.route,
            exact=self.exact_kinds, activity_id=request.activity_id,
        )

    async def find_chunk(self, query: dict, after: AudienceCursor, limit: int, upto: str | None = None) -> list[dict]:
        """The `limit` devices matching `query` after the cursor, in one server reply; shorter only at the end.

        Keyset pages in token order (tokens are unique per app): each page is its own query, `token` after the
        last one returned, sorted by token and limited to the page, so its cost does not grow with the
        audience or with how far the run has got. MongoDB serves it from the (app, token) index in order (no
        sort, stopped by the limit); nx-27017 turns the whole of it into one SQL query on the same index,
        measured at 0.3-0.5 s per 5,000 devices at 100k, 300k and 1M devices, where the one open-ended query
        this replaced made it build the whole result first (59 s and 2.7 GB at 1M, before the first device
        was sent). A page is one reply (batch size = limit): no server cursor is left between pages to be
        lost with its connection, and a failure raises, never ends the audience early.

        A cursor saved by a run before token order (hex `_id` text) goes on in `_id` order to the end of that
        run's audience, the same meaning on any server (on nx-27017 an `_id` range is evaluated document by
        document in Python: slow, but only for runs in flight across the upgrade).
        """
        if isinstance(after, str):  # never a range's: ranges are cut in token order
            return await self._page(query, "_id", ObjectId(after), limit)
        return await self._page(query, "token", after["token"] if after else None, limit, upto)

    async def _page(self, query: dict, key: str, after: object, limit: int, upto: object = None) -> list[dict]:
        """The first `limit` devices of `query` whose `key` comes after `after` (falsy: from the start) and,
        with `upto`, not after it, sorted by `key`, in one reply."""
        bounds = between(after, upto)
        filtered = {**query, key: bounds} if bounds else query
        size = max(1, limit)
        cursor = self._collection.find(filtered, DISPATCH_PROJECTION).sort(key, 1)
        return await cursor.limit(size).batch_size(size).to_list(length=size)

    async def edge_tokens(
        self, query: dict, after: str | None, upto: str | None, limit: int, last: bool = False
    ) -> list[str]:
        """The first (with `last`, the last) `limit` tokens of `query` in (after, upto], in one reply.

        An index walk from one end of the (app, token) index stopped by the limit on MongoDB; on nx-27017 one
        token is 2-3 ms and a page of 1,000 tens of milliseconds at 1M devices. Used to cut an audience into
        ranges and to estimate its size (dispatch/ranges.py).
        """
        bounds = between(after, upto)
        filtered = {**query, "token": bounds} if bounds else query
        cursor = self._collection.find(filtered, {"token": 1, "_id": 0}).sort("token", -1 if last else 1)
        return [str(doc["token"]) for doc in await cursor.limit(limit).batch_size(limit).to_list(length=limit)]

    async def _read_page(self, query: dict, after_id: str | None, limit: int, stream: Any) -> tuple[list[dict], Any]:
        """The `limit` devices after `after_id` by _id, continuing `stream` (a cursor left there) if given.

        Returns the page and what continues it: the open cursor, _EXHAUSTED (the server closed the cursor
        with this full page), or None when the page is short: the end, which is only ever concluded from a
        server reply that carried documents or answered a fresh query.
        """
        if stream is _EXHAUSTED:
            return [], None
        docs = await self._continue(stream, limit) if stream is not None else None
        if docs is None:
            filtered = query if after_id is None else {**query, "_id": {"$gt": ObjectId(after_id)}}
            stream = self._collection.find(filtered, DISPATCH_PROJECTION).sort("_id", 1).batch_size(limit)
            docs = await stream.to_list(length=limit)  # errors propagate: a failed read is never an end
        if len(docs) < limit:
            await _close(stream)
            return docs, None
        return docs, stream if stream.alive else _EXHAUSTED

    @staticmethod
    async def _continue(stream: Any, limit: int) -> list[dict] | None:
        """The next page of an open cursor, or None when it cannot be trusted and a fresh query must read it.

        batch_size == limit, so a page is one server reply (a reply stops short of its batch size only at
        16 MiB, tens of thousands of projected devices), and a reply that carries documents comes from a
        live cursor: a short page with documents is the end. An empty reply closing the cursor is either the
        end after an exactly full page (MongoDB may only find that out on the next getMore) or a cursor the
        server lost: nx-27017 drops a connection's cursors when the connection closes (a reset, a pool
        cleared after a network error) and answers a getMore for an unknown cursor that way, with no error
        (MongoDB raises CursorNotFound). Taking it for the end skipped the rest of the audience.
        """
        try:
            docs = await stream.to_list(length=limit)
        except PyMongoError:  # the cursor died with its connection: read the page afresh
            await _close(stream)
            return None
        if not docs:
            await _close(stream)
            return None
        return docs

    async def deactivate(
        self, app: str, deactivations: Iterable[Deactivation | tuple[str, str]], now: float | None = None
    ) -> int:
        """Mark tokens the provider called invalid; they are never targeted again until re-registered.

        A device registered again after the answer (Deactivation.registered_by) stays active. Returns the
        number of devices deactivated."""
        now = self._clock() if now is None else now
        operations = []
        for item in deactivations:
            token, reason, registered_by = Deactivation(*item)
            update = {"$set": {"active": False, "deactivated_reason": reason, "deactivated_at": now, "updated_at": now}}
            for registered in registered_no_later_than(registered_by):
                operations.append(UpdateOne({**_device_key(app, token), "active": {"$eq": True}, **registered}, update))
        if not operations:
            return 0
        result = await self._collection.bulk_write(operations, ordered=False)
        return result.modified_count

    async def for_user(self, app: str, user_id: str, limit: int = 1000) -> list[Device]:
        """The user's devices in `app`, active or not."""
        query = {"app": {"$eq": app}, "user_id": {"$eq": user_id}}
        # One reply (batch size = limit): no server cursor left between replies that a dropped connection
        # could lose (nx-27017 then answers "exhausted" and the list would silently stop at 101).
        docs = await self._collection.find(query).limit(limit).batch_size(limit).to_list(length=limit)
        return [read_device(doc) for doc in docs]

    async def update_tags(
        self, app: str, token: str, tags: Sequence[str], now: float | None = None
    ) -> Device | None:
        """Replace a device's tags (unique (app, token) index); None if no such device."""
        now = self._clock() if now is None else now
        doc = await self._collection.find_one_and_update(
            _device_key(app, token),
            {"$set": {"tags": list(tags), "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else read_device(doc)

    async def delete(self, app: str, token: str) -> bool:
        result = await self._collection.delete_one(_device_key(app, token))
        return result.deleted_count == 1

    async def tokens_of_user(self, app: str, user_id: str) -> list[str]:
        """Every token the user has in `app` (active or not): what an erasure must also scrub elsewhere."""
        query = {"app": {"$eq": app}, "user_id": {"$eq": user_id}}
        # One reply (a user has a handful of devices): a read cut short by a lost connection would leave
        # tokens unscrubbed (nx-27017 answers a lost cursor as exhausted).
        cursor = self._collection.find(query, {"token": 1}).limit(USER_DEVICES_LIMIT).batch_size(USER_DEVICES_LIMIT)
        return [doc["token"] for doc in await cursor.to_list(length=USER_DEVICES_LIMIT)]

    async def erase_user(self, apps: Sequence[str], user_id: str) -> int:
        """GDPR erasure: delete every device of the user in `apps` (index app_user), and their id from the user
        changes other devices keep (the device was theirs once: the entry says nobody's instead). Returns the
        devices deleted."""
        deleted = 0
        for app in apps:  # one indexed delete per app: `app: {$in}` makes nx-27017 scan the collection
            result = await self._collection.delete_many({"app": {"$eq": app}, "user_id": {"$eq": user_id}})
            deleted += result.deleted_count
            await self._forget_past_user(app, user_id)
        return deleted

    async def _forget_past_user(self, app: str, user_id: str) -> None:
        # `$elemMatch`: any entry of the user's, served by the multikey index app_user_changes on MongoDB (the
        # same as `user_changes.user`, which nx-27017 counts but does not find).
        query = {"app": {"$eq": app}, "user_changes": {"$elemMatch": {"user": {"$eq": user_id}}}}
        projection = {"user_changes": 1, "updated_at": 1}
        for _ in range(ERASURE_ROUNDS):
            docs = await self._collection.find(query, projection).to_list(length=USER_DEVICES_LIMIT)
            if not docs:
                return
            for doc in docs:
                changes = [
                    {**c, "user": None if c.get("user") == user_id else c.get("user")} for c in doc["user_changes"]
                ]
                # Unchanged since read (every registration sets updated_at): else the next round reads it again.
                condition = {"_id": doc["_id"], "updated_at": {"$eq": doc.get("updated_at")}}
                await self._collection.update_one(condition, {"$set": {"user_changes": changes}})
        raise RuntimeError(f"erasure of a user's past devices in app {app!r} did not settle")

    async def upsert_many(self, devices: Sequence[Device], now: float | None = None) -> tuple[int, int]:
        """Bulk register (the import CLI): one bulk_write per batch, then the devices whose user changed one by
        one, as `upsert` does. A token repeated in the batch: the last row wins. Returns (inserted, updated)."""
        now = self._clock() if now is None else now
        last = list({(d.app, d.token): d for d in devices}.values())
        if not last:
            return 0, 0
        operations = [UpdateOne(_same_user(d), _registration(d, now), upsert=True) for d in last]
        try:
            result = await self._collection.bulk_write(operations, ordered=False)
            return result.upserted_count, result.matched_count
        except BulkWriteError as exc:
            details = exc.details
            changed = duplicate_keys(exc)  # devices registered with another user: a change to record
        for index in changed:
            await self.upsert(last[index], now)
        return int(details.get("nUpserted", 0)), int(details.get("nMatched", 0)) + len(changed)

    async def count(self, query: dict) -> int:
        return await self._collection.count_documents(query)

    async def count_audience_by(self, request: PushRequest) -> dict[tuple[str, str | None], int]:
        """The exact audience of `count_audience`, per (platform, device locale), for a campaign's preview: one
        aggregation grouping the matching devices by both fields, in one reply per batch of groups."""
        query = audience_filter(
            request.app, request.target, request.message.category, None, request.route,
            exact=True, activity_id=request.activity_id,
        )
        groups: Counter[tuple[str, str | None]] = Counter()
        if self._database.groups_by_one_field:
            # nx-27017 only: its $group takes no compound `_id`; the two fields of each matching device are read
            # and counted here instead (the same numbers; it scans for the $group anyway).
            async for doc in self._collection.find(query, {"platform": 1, "locale": 1, "_id": 0}):
                groups[(str(doc.get("platform")), doc.get("locale"))] += 1
            return dict(groups)
        pipeline = [{"$match": query}, {"$group": {"_id": {"p": "$platform", "l": "$locale"}, "n": {"$sum": 1}}}]
        async for row in await self._collection.aggregate(pipeline):
            groups[(str(row["_id"].get("p")), row["_id"].get("l"))] += int(row["n"])
        return dict(groups)

    async def count_audience(self, request: PushRequest) -> int:
        """The exact audience of a users or segment request (named kinds, its activity; opted-out devices left
        out): one count, on every server, because marketers read it as the audience (a campaign's estimate)."""
        query = audience_filter(
            request.app, request.target, request.message.category, None, request.route,
            exact=True, activity_id=request.activity_id,
        )
        return await self.count(query)
