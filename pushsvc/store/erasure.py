"""GDPR erasure in the `notifications` collection: a user id and their device tokens taken out of every stored
request that names them (the devices themselves: store/devices.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from pushsvc.store.caps import user_key
from pushsvc.store.database import Database, first_reply
from pushsvc.store.open_hours import tombstone

# An erasure rewrites matching requests this many at a time, and gives up (an error) after this many rounds.
ERASURE_PAGE = 500
ERASURE_ROUNDS = 100


class Erasure:
    def __init__(self, database: Database) -> None:
        self._collection = database.notifications
        self._frequency = database.frequency
        self._open_hours = database.open_hours

    async def forget_user_state(self, app: str, user_id: str, tokens: Sequence[str]) -> None:
        """Delete what is kept per user, keyed by a hash of the user (or of a device counted alone): their
        frequency-cap record (store/caps.py) and their open hours (store/open_hours.py), which an erasure's
        tombstone replaces so that an open being written meanwhile is dropped rather than recreating them."""
        keys = [user_key(app, f"u:{user_id}"), *(user_key(app, f"t:{token}") for token in tokens)]
        now = time.time()  # only the tombstone's expiry
        for key in keys:  # equality writes: `_id: {$in}` makes nx-27017 scan (erasures are rare either way)
            await self._frequency.delete_one({"_id": {"$eq": key}})
            await self._open_hours.replace_one({"_id": {"$eq": key}}, tombstone(key, now), upsert=True)

    async def erase_user(self, app: str, user_id: str, tokens: Sequence[str]) -> int:
        """Remove a user id and their device tokens from every stored request of `app`.

        Each one is replaced by a placeholder that matches no device ("erased-<random>"), so the stored
        request stays valid and positions in a token list (a fan-out's cursor) do not move. Finished
        notifications are included: they keep the request until retention deletes them. Returns how many
        notifications were rewritten.

        Safe against concurrent writers: each rewrite is conditional on the request text it was computed from
        (another erasure of the same notification, a hand-back writing `chunk_done`), and the lookups are
        repeated until they find nothing, so a read cut short or a lost race only costs another round.
        """
        erased = set(tokens)
        # Two queries rather than one `$or`: each is an index point lookup on (app, target_users) and
        # (app, target_tokens) on MongoDB (nx-27017 scans for either spelling; erasures are rare). Array
        # fields are matched with `$in` (the same meaning as `$eq` on MongoDB): nx-27017 turns `$eq` into a
        # plain equality that does not look inside arrays.
        lookups = [{"app": {"$eq": app}, "target_users": {"$in": [user_id]}}]
        if erased:
            lookups.append({"app": {"$eq": app}, "target_tokens": {"$in": sorted(erased)}})
        rewritten: set[str] = set()
        projection = {"request": 1, "chunk_done": 1, "claim": 1}
        for _ in range(ERASURE_ROUNDS):
            found = 0
            for query in lookups:
                for doc in await first_reply(self._collection, query, ERASURE_PAGE, projection):
                    found += 1
                    if await self._scrub(doc, user_id, erased):
                        rewritten.add(doc["_id"])
            if not found:
                return len(rewritten)
        raise RuntimeError(f"erasure of a user in app {app!r} did not settle after {ERASURE_ROUNDS} rounds")

    async def _scrub(self, doc: dict, user_id: str, erased: set[str]) -> bool:
        """Rewrite one request without the user and their tokens, if it still reads as it did."""
        raw = orjson.loads(doc["request"])
        target = raw.get("target", {})
        replacements: dict[str, str] = {}
        for field_name, names in (("users", {user_id}), ("tokens", erased)):
            values = target.get(field_name)
            if isinstance(values, list):
                target[field_name] = [
                    replacements.setdefault(v, f"erased-{uuid.uuid4().hex}") if v in names else v for v in values
                ]
        update: dict[str, Any] = {"request": orjson.dumps(raw).decode()}
        if "users" in target:
            update["target_users"] = target["users"]
        if "tokens" in target:
            update["target_tokens"] = target["tokens"]
        if doc.get("chunk_done"):  # the placeholders stand for the same devices in a stopped chunk
            update["chunk_done"] = [replacements.get(key, key) for key in doc["chunk_done"]]
        # Unchanged since read: the same request text, and the same holder (a claim, hand-back or finish
        # in between may have rewritten chunk_done, which this update would otherwise overwrite).
        condition = {"_id": doc["_id"], "request": {"$eq": doc["request"]}, "claim": {"$eq": doc.get("claim")}}
        # The hash of what the caller sent (ingest/idempotency.py) was taken over the user's id and tokens: it
        # goes too, so nothing derived from them stays. A repeat of the request id is then compared with the
        # scrubbed request, which no longer names them.
        erase_hash = {"request_hash": ""}
        result = await self._collection.update_one(condition, {"$set": update, "$unset": erase_hash})
        return result.modified_count == 1
