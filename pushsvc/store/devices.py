"""The `devices` collection: registration, targeting queries in chunks, deactivation of dead tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from pushsvc.model import Device, Target
from pushsvc.store.database import Database

# Audience cursors kept open between chunks (one per notification being fanned out, plus leftovers).
_MAX_OPEN_STREAMS = 64
# Up to this many users/tokens are looked up one equality query each (concurrently) instead of one `$in`.
SMALL_LOOKUP = 16
# Only what the dispatcher needs travels back from MongoDB.
DISPATCH_PROJECTION = {
    "app": 1,
    "token": 1,
    "platform": 1,
    "locale": 1,
    "timezone": 1,
    "user_id": 1,
    "opt_out": 1,
}


@dataclass(frozen=True)
class DeviceRecord:
    app: str
    token: str
    platform: str
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    locale: str | None = None
    timezone: str | None = None
    app_version: str | None = None
    opt_out: tuple[str, ...] = ()


def _device_key(app: str, token: str) -> dict[str, Any]:
    """The unique (app, token) lookup; `$eq` spelled out (same meaning) so nx-27017 uses its index too."""
    return {"app": {"$eq": app}, "token": {"$eq": token}}


def to_device(doc: dict) -> Device:
    return Device(
        app=doc["app"],
        token=doc["token"],
        platform=doc["platform"],
        locale=doc.get("locale"),
        timezone=doc.get("timezone"),
        user_id=doc.get("user_id"),
    )


def audience_filter(
    app: str, target: Target, category: str | None, timezones: Sequence[str | None] | None
) -> dict:
    """MongoDB filter for the active devices a users/segment target reaches (tokens are looked up directly).

    One flat document (the same meaning as an ``$and`` of the clauses): nx-27017 translates it to one SQL
    query on its indexes, while the ``$and`` form is evaluated document by document (~70x slower there).
    Equalities are spelled ``{"$eq": v}`` (the same meaning as a bare value in MongoDB): nx-27017 then emits
    a plain ``json_extract(...) = ?`` its (app, user_id) expression index can serve; for a bare value it adds
    an array-containment OR that forces a scan of the whole collection.
    """
    query = _active_devices_filter(app, category, timezones)
    if target.users:
        users = list(target.users)
        query["user_id"] = {"$eq": users[0]} if len(users) == 1 else {"$in": users}
    elif target.segment is not None:
        tags: dict[str, Any] = {}
        if target.segment.tags_any:
            tags["$in"] = list(target.segment.tags_any)
        if target.segment.tags_all:
            tags["$all"] = list(target.segment.tags_all)
        if tags:
            query["tags"] = tags
    return query


def _active_devices_filter(app: str, category: str | None, timezones: Sequence[str | None] | None) -> dict:
    """The clauses every audience shares: the app's active devices, minus opt-outs, within the wave's zones."""
    query: dict[str, Any] = {"app": {"$eq": app}, "active": True}
    if category:
        query["opt_out"] = {"$nin": [category]}
    if timezones is not None:
        query["timezone"] = {"$in": list(timezones)}
    return query


def _fields(device: DeviceRecord, now: float) -> dict[str, Any]:
    return {
        "platform": device.platform,
        "user_id": device.user_id,
        "tags": list(device.tags),
        "locale": device.locale,
        "timezone": device.timezone,
        "app_version": device.app_version,
        "opt_out": list(device.opt_out),
        "active": True,
        "deactivated_reason": None,
        "deactivated_at": None,
        "updated_at": now,
    }


class DeviceStore:
    def __init__(self, database: Database) -> None:
        self._collection = database.devices
        # Open audience cursors by (query, last _id returned): see find_chunk.
        self._streams: dict[tuple[str, str], Any] = {}

    async def upsert(self, device: DeviceRecord, now: float | None = None) -> tuple[dict, bool]:
        """Register or refresh a device; re-registering a deactivated token reactivates it. Returns (doc, created)."""
        now = time.time() if now is None else now
        fields = _fields(device, now)
        result = await self._collection.update_one(
            _device_key(device.app, device.token),
            {"$set": fields, "$setOnInsert": {"app": device.app, "token": device.token, "created_at": now}},
            upsert=True,
        )
        doc = await self._collection.find_one(_device_key(device.app, device.token))
        assert doc is not None
        return doc, result.upserted_id is not None

    async def _find_all(self, query: dict) -> list[dict]:
        return [doc async for doc in self._collection.find(query, DISPATCH_PROJECTION)]

    async def _find_each(self, query: dict, field: str, values: Sequence[str]) -> list[dict]:
        """One `{field: {$eq: v}}` query per value, concurrently, merged in _id order (duplicates dropped).

        The same result as `{field: {$in: values}}`: for a handful of values these are index point lookups
        on any MongoDB, and the only shape nx-27017 serves from its expression indexes (see audience_filter).
        """
        results = await asyncio.gather(*(self._find_all({**query, field: {"$eq": v}}) for v in dict.fromkeys(values)))
        merged = {doc["_id"]: doc for docs in results for doc in docs}
        return [merged[key] for key in sorted(merged)]

    async def find_by_tokens(self, app: str, tokens: Sequence[str]) -> list[dict]:
        query: dict[str, Any] = {"app": {"$eq": app}, "active": True}
        if len(tokens) <= SMALL_LOOKUP:
            return await self._find_each(query, "token", tokens)
        return await self._find_all({**query, "token": {"$in": list(tokens)}})

    async def find_audience(
        self,
        app: str,
        target: Target,
        category: str | None,
        timezones: Sequence[str | None] | None,
        after_id: str | None,
        limit: int,
    ) -> list[dict]:
        """Next `limit` devices of a users/segment audience by _id after the cursor (hex ObjectId)."""
        if target.users and len(target.users) <= SMALL_LOOKUP:
            # A few users: their devices are point lookups (all of them; a user has a handful), paged here.
            base = _active_devices_filter(app, category, timezones)
            docs = await self._find_each(base, "user_id", target.users)
            if after_id is not None:
                after = ObjectId(after_id)
                docs = [d for d in docs if d["_id"] > after]
            return docs[:limit]
        return await self.find_chunk(audience_filter(app, target, category, timezones), after_id, limit)

    async def find_chunk(self, query: dict, after_id: str | None, limit: int) -> list[dict]:
        """Next `limit` devices by _id after the cursor (hex ObjectId): stable paging a restart can resume."""
        # Consecutive chunks of one audience continue one server cursor (getMore) instead of starting a new
        # query per chunk: one query plan per fan-out, and no `_id > cursor` re-scan per chunk (nx-27017
        # evaluates ObjectId ranges in Python over the whole collection: ~1.5 s per chunk at 100k devices).
        # A cursor we don't hold (a restart, another replica, an expired server cursor) opens a fresh query.
        key = (repr(query), after_id)
        stream = self._streams.pop(key, None)
        if stream is not None:
            try:
                docs = await stream.to_list(length=limit)
            except PyMongoError:
                stream = None
        if stream is None:
            filtered = query if after_id is None else {**query, "_id": {"$gt": ObjectId(after_id)}}
            stream = self._collection.find(filtered, DISPATCH_PROJECTION).sort("_id", 1).batch_size(limit)
            docs = await stream.to_list(length=limit)
        if len(docs) == limit:
            if len(self._streams) >= _MAX_OPEN_STREAMS:  # abandoned fan-outs (lease lost): close the oldest
                await self._streams.pop(next(iter(self._streams))).close()
            self._streams[(key[0], str(docs[-1]["_id"]))] = stream
        else:
            await stream.close()
        return docs

    async def deactivate(
        self, app: str, tokens_with_reasons: Iterable[tuple[str, str]], now: float | None = None
    ) -> int:
        """Mark tokens the provider called invalid; they are never targeted again until re-registered."""
        now = time.time() if now is None else now
        operations = [
            UpdateOne(
                {**_device_key(app, token), "active": {"$eq": True}},
                {
                    "$set": {
                        "active": False,
                        "deactivated_reason": reason,
                        "deactivated_at": now,
                        "updated_at": now,
                    }
                },
            )
            for token, reason in tokens_with_reasons
        ]
        if not operations:
            return 0
        result = await self._collection.bulk_write(operations, ordered=False)
        return result.modified_count

    async def for_user(self, app: str, user_id: str, limit: int = 1000) -> list[dict]:
        query = {"app": {"$eq": app}, "user_id": {"$eq": user_id}}
        return [doc async for doc in self._collection.find(query).limit(limit)]

    async def update_tags(
        self, app: str, token: str, tags: Sequence[str], now: float | None = None
    ) -> dict | None:
        """Replace a device's tags (unique (app, token) index); None if no such device."""
        now = time.time() if now is None else now
        return await self._collection.find_one_and_update(
            _device_key(app, token),
            {"$set": {"tags": list(tags), "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )

    async def delete(self, app: str, token: str) -> bool:
        result = await self._collection.delete_one(_device_key(app, token))
        return result.deleted_count == 1

    async def erase_user(self, apps: Sequence[str], user_id: str) -> int:
        """GDPR erasure: delete every device of the user in these apps (served by the app_user index)."""
        deleted = 0
        for app in apps:  # one indexed delete per app: `app: {$in}` makes nx-27017 scan the collection
            result = await self._collection.delete_many({"app": {"$eq": app}, "user_id": {"$eq": user_id}})
            deleted += result.deleted_count
        return deleted

    async def upsert_many(self, devices: Sequence[DeviceRecord], now: float | None = None) -> tuple[int, int]:
        """Bulk register (the import CLI): one bulk_write per batch. Returns (inserted, updated)."""
        now = time.time() if now is None else now
        operations = [
            UpdateOne(
                _device_key(d.app, d.token),
                {"$set": _fields(d, now), "$setOnInsert": {"app": d.app, "token": d.token, "created_at": now}},
                upsert=True,
            )
            for d in devices
        ]
        if not operations:
            return 0, 0
        # Ordered: a token repeated in the file is inserted once, then updated (last row wins).
        result = await self._collection.bulk_write(operations, ordered=True)
        return result.upserted_count, result.matched_count

    async def count(self, query: dict) -> int:
        return await self._collection.count_documents(query)
