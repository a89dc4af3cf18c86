"""Ranges: one large fan-out split into parts of its audience, each a notification of its own.

A range is a document of the `notifications` collection (lane `range`) holding the same request as its parent
and a slice of the audience in token order, `bounds` = (after, upto]: tokens greater than `after` (None: from
the start) up to and including `upto` (None: to the end). It is claimed, leased, renewed, advanced, handed
back and finished by the one lease protocol like any notification, so every replica can work ranges of the
same campaign and a replica killed mid-range costs at most its chunk in flight.

The parent keeps the contract (its id, status, outcome event) and is never run again once split: it records
its boundaries, then its ranges, then waits. Its final counts are the sum of its ranges', written once
(`settle`) when every range is final and no longer held; whoever gets there first (the runner ending the last
range, a cancel, or the outcome sweep's check of `settle_at`) computes the same sum, and a conditional update
lets exactly one of them write it and announce it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from pushsvc.model import NotificationState
from pushsvc.store.counts import COUNT_KEYS, full_counts
from pushsvc.store.database import duplicate_keys, first_reply
from pushsvc.store.notifications import PAUSED, STALLED_RUNS, NotificationStore
from pushsvc.store.records import Bounds, NotificationRecord

LANE_RANGE = "range"
RANGE_KIND = "range"
# How long a split parent waits between checks by the outcome sweep (the backstop for a range whose last
# runner died before settling its parent).
SETTLE_CHECK_SECONDS = 30.0
# Passes of `follow` while the parent's state keeps changing under it (an API call racing the runner).
FOLLOW_ROUNDS = 3
# A split parent's `lease_until`: no claim ever finds it expired (a finite number: every server stores it).
NEVER = 1e15
FINAL_STATES = (str(NotificationState.DONE), str(NotificationState.FAILED), str(NotificationState.CANCELLED))
# Fields a range copies from its parent: the request and how it is to be sent.
# `target_users` too: a GDPR erasure finds and scrubs ranges like any stored request.
# `trace`: a range's spans join its campaign's trace.
_INHERITED = (
    "app", "request_id", "request", "source", "quiet_hours", "zones_passed", "variants", "control_percent",
    "best_time", "target_users", "trace",
)
_STATE_FIELDS = {"state": 1, "finished_at": 1}
# What a settled parent is announced with (OutcomeEvent, metrics, the log line).
_SETTLED_FIELDS = {"app": 1, "request_id": 1, "kind": 1, "state": 1, "counts": 1, "error": 1, "finished_at": 1,
                   "ranges": 1, "trace": 1}


def range_id(parent_id: str, index: int) -> str:
    return f"{parent_id}#range-{index:03d}"


def expected_ranges(parent: Mapping[str, Any]) -> int:
    """How many ranges a parent has: `ranges` once its split is marked, else one more than the boundaries it
    saved (a split cut short), else 0 (not split)."""
    if parent.get("ranges"):
        return int(parent["ranges"])
    cuts = parent.get("boundaries")
    return len(cuts) + 1 if cuts is not None else 0


def ranges_of(boundaries: Sequence[str]) -> list[Bounds]:
    """The (after, upto] slices that sorted, distinct `boundaries` cut the token space into."""
    edges: list[str | None] = [None, *boundaries, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class RangeStore:
    def __init__(self, notifications: NotificationStore) -> None:
        self._notifications = notifications
        self._collection = notifications.database.notifications

    async def create(self, parent_id: str, boundaries: Sequence[str], throttle: float | None) -> int:
        """Insert the ranges of the parent cut at `boundaries` (saved on the parent first, so a retry after a
        crash inserts the same ranges: their ids are deterministic and duplicates are absorbed).

        The parent is read again here, not taken from the claim: a GDPR erasure that rewrote its request
        since then must not be undone in copies it will never scrub.
        """
        parent = await self._collection.find_one({"_id": parent_id})
        if parent is None:
            raise RuntimeError(f"{parent_id} vanished during its split")
        documents = []
        for index, bounds in enumerate(ranges_of(boundaries)):
            doc = {key: parent[key] for key in _INHERITED if key in parent}
            doc.update(
                _id=range_id(parent["_id"], index),
                kind=RANGE_KIND,
                parent=parent["_id"],
                bounds=list(bounds),
                lane=LANE_RANGE,
                state=str(NotificationState.SCHEDULED),
                created_at=parent["created_at"],
                due_at=float(parent["due_at"]),
                lease_owner=None,
                lease_until=0.0,
                claim=None,
                progress_seq=0,
                cursor=None,
                counts=dict.fromkeys(COUNT_KEYS, 0),
            )
            if throttle:
                doc["throttle_per_second"] = throttle
            documents.append(doc)
        try:
            await self._collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:  # ranges inserted by an earlier attempt are fine; anything else is not
            duplicate_keys(exc)
        return len(documents)

    async def of(self, parent: Mapping[str, Any]) -> list[dict]:
        """The ranges of a split parent (state, counts, error, who holds them), in one reply."""
        return await first_reply(
            self._collection,
            {"parent": {"$eq": parent["_id"]}},
            expected_ranges(parent),
            {"state": 1, "counts": 1, "error": 1, "claim": 1, "lease_until": 1},
        )

    async def last_progress(self, parent_id: str, count: int) -> float | None:
        """When the campaign's ranges (at most `count`) last got on (a chunk saved or a wave ended, scheduling
        clock): a range's wave is late only from then (dispatch/fanout.py `_current_wave`). None: not yet."""
        ranges = await first_reply(
            self._collection, {"parent": {"$eq": parent_id}}, count, {"progressed_at": 1, "wave_ended_at": 1}
        )
        times = [float(r[k]) for r in ranges for k in ("progressed_at", "wave_ended_at") if r.get(k) is not None]
        return max(times, default=None)

    async def live_counts(self, parent: dict) -> dict:
        """`parent` with the sum of its ranges' counts so far, if it is split and not settled yet."""
        if not expected_ranges(parent) or parent.get("settled"):
            return parent
        ranges = await self.of(parent)
        return {**parent, "counts": _summed(ranges)}

    async def follow(self, parent_id: str) -> None:
        """Move the ranges of a split parent to the parent's state as it is now: after a pause, resume or
        cancel by the API, by the runner that split a parent paused or cancelled meanwhile, after a give-up,
        and as a repair by the outcome sweep's check (a failed write, an older replica's transition).
        Idempotent; repeated while the parent's state changes under it."""
        for _ in range(FOLLOW_ROUNDS):
            parent = await self._collection.find_one({"_id": parent_id}, {"state": 1, "finished_at": 1, "ranges": 1})
            if parent is None:
                return
            state = parent["state"]
            update: dict[str, Any]
            if state == PAUSED:
                from_states, update = _WORKING, {"state": PAUSED}
            elif state in _WORKING:
                from_states, update = [PAUSED], {"state": str(NotificationState.SCHEDULED), STALLED_RUNS: 0}
                if state == str(NotificationState.SCHEDULED) and parent.get("ranges"):
                    # Resumed by a transition that took it for unsplit (it was split meanwhile): it is worked
                    # through its ranges, so it is dispatching.
                    await self._collection.update_one(
                        {"_id": parent_id, "state": {"$eq": state}},
                        {"$set": {"state": str(NotificationState.DISPATCHING)}},
                    )
            elif state in (str(NotificationState.CANCELLED), str(NotificationState.FAILED)):
                # Final without its ranges (a cancel, a give-up): what they have not done will not be done.
                from_states = [*_WORKING, PAUSED]
                update = {"state": str(NotificationState.CANCELLED), "finished_at": parent.get("finished_at")}
            else:
                return
            await self._collection.update_many(
                {"parent": {"$eq": parent_id}, "state": {"$in": from_states}}, {"$set": update}
            )
            now = await self._collection.find_one({"_id": parent_id}, {"state": 1})
            if now is None or now["state"] == state:
                return

    async def settle(self, parent_id: str, expired_by: float, now: float) -> NotificationRecord | None:
        """Write the parent's final counts (and state, unless cancelled) once every range is final and no
        longer held; returns the parent as written (who it is and how it ended), or None (ranges still
        working, or it was settled already: by someone else, or by an earlier attempt of ours whose answer was
        lost, which the outcome sweep then announces).

        A range held by a replica whose lease ended by `expired_by` (the database's clock) is fenced off
        first (its claim cleared), so a lapsed holder's late write cannot change counts already summed. A
        cancelled parent settles with the ranges it has (a split cut short by a crash inserted fewer), once
        nobody holds the parent itself; any other waits for all of them.
        """
        parent = await self._collection.find_one({"_id": parent_id}, {"request": 0})
        if parent is None or parent.get("settled") or not expected_ranges(parent):
            return None
        ranges = await self._final_ranges(parent, expired_by)
        if ranges is None:
            return None
        state, error = _final_state(parent, ranges)
        finished_at = float(parent.get("finished_at") or now)
        expire_at = self._notifications.expiry(finished_at)
        written = await self._collection.find_one_and_update(
            # `settled` is written false by the split (`$ne: true` does not match a missing field on nx-27017);
            # a cancelled parent whose split was cut short has none.
            {"_id": parent_id, "settled": {"$in": [False, None]}, "state": {"$eq": parent["state"]}},
            {
                "$set": {
                    "state": state,
                    "counts": _summed(ranges),
                    "error": error,
                    "finished_at": finished_at,
                    "expire_at": expire_at,
                    "settled": True,
                    "event_pending": True,
                    "claim": None,
                    "lease_owner": None,
                    "lease_until": 0.0,
                },
                "$unset": {"settle_at": ""},
            },
            projection=_SETTLED_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        if written is None:
            return None
        # Ranges expire with their parent, never before it (a paused campaign's finished ranges are kept).
        await self._collection.update_many({"parent": {"$eq": parent_id}}, {"$set": {"expire_at": expire_at}})
        return NotificationRecord.from_document(written)

    async def _final_ranges(self, parent: dict, expired_by: float) -> list[dict] | None:
        """The parent's ranges once every one is final and no longer held (a lapsed holder fenced off: its claim
        cleared, so its late write cannot change counts already summed), or None while they are not."""
        cancelled = parent["state"] == str(NotificationState.CANCELLED)
        # A split not marked complete is its runner's (or resumed after a crash); a cancelled parent whose
        # runner is gone is settled with what was inserted.
        if not parent.get("ranges") and (not cancelled or float(parent.get("lease_until") or 0) > expired_by):
            return None
        ranges = await self.of(parent)
        if len(ranges) < expected_ranges(parent) and not cancelled:
            return None
        if any(item["state"] not in FINAL_STATES for item in ranges):
            return None
        held = [item for item in ranges if item.get("claim") is not None]
        if any(float(item.get("lease_until") or 0) > expired_by for item in held):
            return None  # still held: a cancelled range's last chunk may still add its counts
        if held:
            await self._collection.update_many(
                {"_id": {"$in": [item["_id"] for item in held]}, "lease_until": {"$lte": expired_by}},
                {"$set": {"claim": None, "lease_owner": None, "lease_until": 0.0}},
            )
            ranges = await self.of(parent)  # as they are now that no late write can land
        return ranges

    async def mark_split(self, parent_id: str, token: str, count: int, settle_at: float) -> dict | None:
        """The parent's last step of a split, under its lease: it has `count` ranges, is let go and never
        claimed again (`lease_until` beyond any clock; it stays `dispatching` for whoever reads its status),
        and its settle check is due at `settle_at`. Fenced and idempotent (`released_claim` read back)."""
        found = await self._collection.find_one_and_update(
            {"_id": parent_id, "claim": {"$eq": token}},
            {
                "$set": {
                    "ranges": count,
                    "settled": False,
                    "settle_at": settle_at,
                    # Announced once, when settled: a cancel that took it for unsplit owes no event of its own.
                    "event_pending": False,
                    "claim": None,
                    "released_claim": token,
                    "lease_owner": None,
                    "lease_until": NEVER,
                    STALLED_RUNS: 0,
                }
            },
            projection=_STATE_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        if found is not None:
            return found
        doc = await self._collection.find_one({"_id": parent_id}, {**_STATE_FIELDS, "released_claim": 1})
        return doc if doc is not None and doc.get("released_claim") == token else None

    async def unsettled(self, due_by: float, limit: int) -> list[dict]:
        """Split parents whose settle check is due (the outcome sweep's backstop)."""
        query = {"settle_at": {"$lte": due_by}}
        cursor = self._collection.find(query, {"request": 0}).limit(limit).batch_size(limit)
        return [doc async for doc in cursor]

    async def check_later(self, parent_id: str, at: float) -> None:
        await self._collection.update_one(
            {"_id": parent_id, "settled": {"$in": [False, None]}}, {"$set": {"settle_at": at}}
        )


def _final_state(parent: dict, ranges: list[dict]) -> tuple[str, str | None]:
    """A settled parent's state and error: a cancel stays cancelled; otherwise done, or failed naming the first
    failed range."""
    if parent["state"] == str(NotificationState.CANCELLED):
        return parent["state"], parent.get("error")
    failed = sorted((r for r in ranges if r["state"] == str(NotificationState.FAILED)), key=lambda r: r["_id"])
    if not failed:
        return str(NotificationState.DONE), parent.get("error")
    error = f"{len(failed)} of {len(ranges)} ranges failed; {failed[0]['_id']}: {failed[0].get('error')}"
    return str(NotificationState.FAILED), error


def _summed(ranges: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for item in ranges:
        total.update({k: int(v) for k, v in (item.get("counts") or {}).items()})
    return full_counts(total)


# How a split parent's own transition differs from an unsplit campaign's (by the state it moves to): resumed,
# it is `dispatching` (its ranges are scheduled); cancelled, its event waits for the settle, checked at once.
SPLIT_PARENT: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    PAUSED: lambda update: {},
    str(NotificationState.SCHEDULED): lambda update: {"state": str(NotificationState.DISPATCHING)},
    str(NotificationState.CANCELLED): lambda update: {"event_pending": False, "settle_at": update["finished_at"]},
}
_WORKING = [str(NotificationState.SCHEDULED), str(NotificationState.DISPATCHING)]
