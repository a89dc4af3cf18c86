"""Campaigns: a notification document (request id "campaign:<id>" in its app, the same request contract) plus
campaign fields.

A campaign is worked by the same scheduler and runner as any notification; the campaign fields (name,
throttle_per_second, quiet_hours, audience_estimate) tell the runner how. Pause, resume and cancel are
conditional state transitions the runner notices between chunks (StateChanges; cancel serves any notification).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel

from pushsvc.model import NotificationState
from pushsvc.store.notifications import ACTIVE_STATES, LANE_BATCH, PAUSED, STALLED_RUNS, NotificationStore
from pushsvc.store.ranges import SPLIT_PARENT, RangeStore

CAMPAIGN_PREFIX = "campaign:"
KIND = "campaign"
CAMPAIGN_INDEXES = [
    # list: newest campaigns first, optionally for one app.
    IndexModel([("kind", ASCENDING), ("created_at", DESCENDING)], name="kind_created"),
    IndexModel([("kind", ASCENDING), ("app", ASCENDING), ("created_at", DESCENDING)], name="kind_app_created"),
]
STATUSES = ("accepted", "scheduled", "dispatching", PAUSED, "done", "failed", "cancelled")
_ACTIVE = [str(s) for s in ACTIVE_STATES]


def campaign_request_id(campaign_id: str) -> str:
    return CAMPAIGN_PREFIX + campaign_id


class CampaignStore:
    def __init__(self, notifications: NotificationStore) -> None:
        self._collection = notifications.database.notifications
        self._notifications = notifications
        self._ranges = RangeStore(notifications)
        self._changes = StateChanges(notifications)

    async def ensure_indexes(self) -> None:
        await self._collection.create_indexes(CAMPAIGN_INDEXES)

    async def get(self, app: str, campaign_id: str) -> dict | None:
        """The campaign, with its counts so far (the sum of its ranges' while a split campaign runs)."""
        doc = await self._notifications.find(app, campaign_request_id(campaign_id))
        return await self.with_counts_so_far(doc) if doc is not None and doc.get("kind") == KIND else None

    async def with_counts_so_far(self, doc: dict) -> dict:
        """A campaign document already read (by `get`, or by intake comparing a repeated create) with its counts
        as GET shows them: a split campaign's summed from its ranges until settled (one read then, none else)."""
        return await self._ranges.live_counts(doc)

    async def list(self, apps: Collection[str], status: str | None, limit: int) -> list[dict]:
        """Campaigns of `apps`, newest first."""
        if not apps:
            return []
        query: dict[str, Any] = {"kind": KIND, "app": {"$in": sorted(apps)}}
        if status is not None:
            query["state"] = status
        cursor = self._collection.find(query).sort("created_at", -1).limit(limit).batch_size(limit)
        return [await self._ranges.live_counts(doc) async for doc in cursor]

    async def pause(self, app: str, campaign_id: str, now: float) -> dict | None:
        doc = await self.get(app, campaign_id)  # its _id: a campaign created before ids were per app has another
        return await self._changes.pause(doc, now) if doc is not None else None

    async def resume(self, app: str, campaign_id: str, now: float) -> dict | None:
        doc = await self.get(app, campaign_id)
        return await self._changes.resume(doc, now) if doc is not None else None

    async def cancel(self, app: str, campaign_id: str, now: float) -> dict | None:
        doc = await self.get(app, campaign_id)
        return await self._changes.cancel(doc, now) if doc is not None else None


class StateChanges:
    """Pause, resume and cancel: conditional state transitions the runner notices between chunks.

    The one way to change a notification's course, for campaigns (`POST /v1/campaigns/{id}/cancel`, ...) and
    any notification (`POST /v1/notifications/{id}/cancel`): each returns the document after the change, or
    None when it is not in a state the change applies to.
    """

    def __init__(self, notifications: NotificationStore) -> None:
        self._notifications = notifications
        self._ranges = RangeStore(notifications)

    async def pause(self, doc: dict, now: float) -> dict | None:
        return await self._transition(doc, _ACTIVE, {"state": PAUSED, "paused_at": now})

    async def resume(self, doc: dict, now: float) -> dict | None:
        # Claimable again as soon as it is due; a runner still holding the lease notices and lets go.
        # Resumed by an operator (often after fixing why it stalled): its runs start counting again.
        update = {"state": str(NotificationState.SCHEDULED), "resumed_at": now, STALLED_RUNS: 0}
        return await self._transition(doc, [PAUSED], update)

    async def cancel(self, doc: dict, now: float) -> dict | None:
        """Final: one not claimed yet is never sent; one being worked stops after its chunk in flight, and its
        runner announces it (an unclaimed one is announced by the outcome sweep: `event_pending`)."""
        update = {
            "state": str(NotificationState.CANCELLED),
            "finished_at": now,
            "expire_at": self._notifications.expiry(now),
            "event_pending": True,
        }
        from_states = [*_ACTIVE, PAUSED]
        if doc.get("lane") != LANE_BATCH:
            return await self._transition(doc, from_states, update)
        # The batch lane sends a notification as one chunk and finishes it only from `dispatching`: a cancel
        # landing while it is held would stop nothing and leave the devices it reached uncounted. One whose lease
        # has run out (its holder crashed, drained or lost MongoDB: the runbook's crash-looping notification) is
        # sent by nobody until claimed again, so it may be cancelled; a claim and the cancel are each one
        # conditional write, so one of them wins, and a late finish of the old holder is fenced by the state.
        dispatching = str(NotificationState.DISPATCHING)
        from_states.remove(dispatching)
        after = await self._transition(doc, from_states, update)
        if after is None:
            after = await self._notifications.transition(doc["_id"], [dispatching], update, lease_ended_by=now)
        return after

    async def _transition(self, doc: dict, from_states: list[str], update: dict[str, Any]) -> dict | None:
        """`doc` after the change, or None (no longer there, or not in one of `from_states`).

        A split notification (store/ranges.py) moves with its ranges: paused, resumed or cancelled together. Its
        parent is only ever worked through its ranges, so a resume makes it `dispatching` again (not claimable:
        its lease is `NEVER`), and a cancel is announced when it is settled (its ranges' last counts in),
        by the runner of its last range still running, or by the outcome sweep's next check (`settle_at`).
        """
        if doc.get("boundaries") is not None:
            update = {**update, **SPLIT_PARENT[update["state"]](update)}
        after = await self._notifications.transition(doc["_id"], from_states, update)
        if after is not None and after.get("boundaries") is not None:
            # Split meanwhile or before: its ranges follow (a failure here is repaired by the outcome sweep's
            # check of split campaigns, within its interval).
            await self._ranges.follow(after["_id"])
            after = await self._ranges.live_counts(await self._notifications.get(after["_id"]) or after)
        return after
