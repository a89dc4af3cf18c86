"""Per-user documents changed by read, change in Python, write conditioned on the version read (frequency caps,
store/caps.py; open hours, store/open_hours.py): how both read a set of them and apply one round of writes.

A round is one unordered bulk write of `UpdateOne({_id, v: read}, ...)` (or an `InsertOne` for a document not
seen): a write whose condition no longer matches, or an insert that met another writer's, is not an error but a
lost race, which the caller reads back and decides again. Conditions are `_id`/`v` equalities only: nx-27017
has no `$not` and no array positions in queries, which a single conditional upsert would need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from pushsvc.store.database import Database, duplicate_keys


async def read_keys(
    database: Database, collection: AsyncCollection[Any], keys: Sequence[str], projection: Mapping[str, int]
) -> dict[str, dict]:
    """The documents of `keys` that exist: one `$in`, or one equality each where `Database.reads_each` says so."""
    if not keys:
        return {}
    if not database.reads_each(len(keys)):
        found = collection.find({"_id": {"$in": list(keys)}}, projection)
        return {doc["_id"]: doc async for doc in found}
    docs = await asyncio.gather(*(collection.find_one({"_id": {"$eq": k}}, projection) for k in keys))
    return {doc["_id"]: doc for doc in docs if doc is not None}


async def all_applied(collection: AsyncCollection[Any], writes: Sequence[Any]) -> bool:
    """Apply one round; True if every write applied, False if some lost a race (read back to learn which). Any
    other failure raises."""
    if not writes:
        return True
    try:
        result = await collection.bulk_write(list(writes), ordered=False)
        return result.inserted_count + result.modified_count == len(writes)
    except BulkWriteError as exc:
        duplicate_keys(exc)  # a lost race; anything else raises
        return False
