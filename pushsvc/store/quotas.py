"""The shared limiter's counters (dispatch/quota.py): one document per quota scope and slice of time.

`_id` is "<scope>:<slice index>"; `taken` counts the permits asked for (it may pass the slice's budget: each
replica is granted only its part below it); `expire_at` (a BSON date) lets MongoDB's TTL monitor remove slices
long past. One `find_one_and_update` per block of permits: an upsert with `$inc`, atomic on a single document,
so no transaction and no read-modify-write race.
"""

from __future__ import annotations

import datetime as dt

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from pushsvc.store.database import Database


class QuotaStore:
    def __init__(self, database: Database) -> None:
        self._collection = database.quota_slices

    async def take(self, scope: str, slice_index: int, slice_start: float, count: int, expire_at: float) -> int:
        """Add `count` to the slice's counter (creating it); returns the counter after."""
        update = {
            "$inc": {"taken": count},
            # $set rather than $setOnInsert: the same values on every take, and not every MongoDB wire server
            # applies $setOnInsert on an upsert.
            "$set": {
                "scope": scope,
                "start": slice_start,
                "expire_at": dt.datetime.fromtimestamp(expire_at, dt.UTC),
            },
        }
        key = f"{scope}:{slice_index}"
        for attempt in (1, 2):
            try:
                document = await self._collection.find_one_and_update(
                    {"_id": {"$eq": key}},
                    update,
                    projection={"taken": True},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                # Two replicas created the slice's document at once and this one lost the insert (MongoDB retries
                # such an upsert itself since 4.2; other servers may not): the document exists now, so the second
                # try is an update.
                if attempt == 2:
                    raise
                continue
            return int(document["taken"])
        raise AssertionError("unreachable")
