"""The ranges of a split campaign on the real MongoDB wire server: they follow their parent's state, and the
parent is settled once, with the exact sum, after every range is final and no holder can still write."""

from __future__ import annotations

import asyncio
import time

import pytest

from pushsvc.model import NotificationState
from pushsvc.store.notifications import LANE_FANOUT
from pushsvc.store.ranges import LANE_RANGE, NEVER, RangeStore, range_id
from tests.integration.stores import Stores, document

PARENT = "demo:campaign:split"


@pytest.fixture
def store(notification_store: Stores) -> Stores:
    return notification_store


async def split_parent(store: Stores, now: float, cuts: list[str]) -> tuple[RangeStore, str]:
    """A campaign claimed by replica "a", cut at `cuts` and marked split, as the runner does it."""
    raw = {"id": "campaign:split", "app": "demo", "target": {"segment": {"tags_any": ["all"]}},
           "message": {"title": "t"}}
    doc = document(raw, "campaign", now, now)
    doc.update(kind="campaign", lane=LANE_FANOUT, audience_estimate=1000)
    await store.notifications.record([doc])
    token, records = await store.claims.claim_due("a", now, now + 30, now, 1, LANE_FANOUT)
    assert [r.id for r in records] == [PARENT]
    assert await store.leases.advance(PARENT, token, 0, None, {}, {"boundaries": cuts}) is not None
    ranges = RangeStore(store.notifications)
    assert await ranges.create(PARENT, cuts, None) == len(cuts) + 1
    assert await ranges.create(PARENT, cuts, None) == len(cuts) + 1  # a retry after a crash: absorbed
    marked = await ranges.mark_split(PARENT, token, len(cuts) + 1, now + 30)
    assert marked is not None and marked["state"] == "dispatching"
    return ranges, token


async def test_a_split_parent_is_never_claimed_again_and_its_ranges_are(store: Stores) -> None:
    now = time.time()
    await split_parent(store, now, ["m"])
    parent = await store.notifications.get(PARENT)
    assert parent is not None and parent["lease_until"] == NEVER and parent["claim"] is None
    _, records = await store.claims.claim_due("b", now + 3600, now + 3630, now + 3600, 10, LANE_FANOUT)
    assert records == []
    _, records = await store.claims.claim_due(
        "b", now, now + 30, now, 10, LANE_RANGE, [NotificationState.SCHEDULED, NotificationState.DISPATCHING]
    )
    assert sorted(r.id for r in records) == [range_id(PARENT, 0), range_id(PARENT, 1)]
    assert [r.bounds for r in sorted(records, key=lambda r: r.id)] == [(None, "m"), ("m", None)]
    assert all(r.parent == PARENT and r.kind == "range" for r in records)


async def test_ranges_follow_pause_resume_and_cancel(store: Stores) -> None:
    now = time.time()
    ranges, _ = await split_parent(store, now, ["f", "p"])
    states = lambda: store.collection.distinct("state", {"parent": PARENT})  # noqa: E731
    await store.notifications.transition(PARENT, ["dispatching"], {"state": "paused"})
    await ranges.follow(PARENT)
    assert await states() == ["paused"]
    # Resumed by a replica that took it for unsplit (scheduled): the parent is made dispatching again.
    await store.notifications.transition(PARENT, ["paused"], {"state": "scheduled"})
    await ranges.follow(PARENT)
    assert await states() == ["scheduled"]
    assert (await store.notifications.get(PARENT) or {})["state"] == "dispatching"
    await store.notifications.transition(PARENT, ["dispatching"], {"state": "cancelled", "finished_at": now})
    await ranges.follow(PARENT)
    assert await states() == ["cancelled"]


async def test_settled_once_with_the_exact_sum_after_fencing_off_a_lapsed_holder(store: Stores) -> None:
    now = time.time()
    ranges, _ = await split_parent(store, now, ["m"])
    first, second = range_id(PARENT, 0), range_id(PARENT, 1)
    states = [NotificationState.SCHEDULED, NotificationState.DISPATCHING]
    token, records = await store.claims.claim_due("b", now, now + 1.0, now, 10, LANE_RANGE, states)
    assert len(records) == 2
    assert await store.leases.advance(first, token, 0, {"token": "c"}, {"targeted": 3, "delivered": 3}) is not None
    assert await store.leases.finish(first, token, NotificationState.DONE, None, now, announce=False) is not None
    assert await ranges.settle(PARENT, now - 1, now) is None  # the second range is still working

    # The campaign is cancelled while the second range's holder is cut off (its lease runs out unrenewed).
    await store.notifications.transition(PARENT, ["dispatching"], {"state": "cancelled", "finished_at": now})
    await ranges.follow(PARENT)
    assert await ranges.settle(PARENT, now - 1, now) is None  # held, lease still good: its chunk may count
    settled = await ranges.settle(PARENT, now + 2.0, now)  # the lease has ended: fenced off, then summed
    assert settled is not None and settled.state == "cancelled" and settled.id == PARENT
    assert settled.counts["delivered"] == 3 and settled.counts["targeted"] == 3
    # The lapsed holder's late write lands nowhere, and nobody settles twice.
    assert await store.leases.advance(second, token, 0, {"token": "z"}, {"targeted": 9, "delivered": 9}) is None
    assert await ranges.settle(PARENT, now + 2.0, now) is None
    parent = await store.notifications.get(PARENT)
    assert parent is not None and parent["counts"]["delivered"] == 3 and parent["event_pending"]
    finished = [d async for d in store.collection.find({"parent": PARENT})]
    assert all(d.get("expire_at") is not None and not d.get("event_pending") for d in finished)


async def test_a_wave_reschedule_keeps_a_pause_that_landed_after_the_last_chunk(store: Stores) -> None:
    now = time.time()
    await split_parent(store, now, ["m"])
    states = [NotificationState.SCHEDULED, NotificationState.DISPATCHING]
    token, _ = await store.claims.claim_due("b", now, now + 30, now, 1, LANE_RANGE, states)
    (held,) = [d async for d in store.collection.find({"claim": token})]
    await store.notifications.transition(held["_id"], ["dispatching"], {"state": "paused"})
    assert await store.leases.reschedule(held["_id"], token, now + 3600, {"zones_done": ["UTC"], "wave_zones": None})
    after = await store.notifications.get(held["_id"])
    assert after is not None and after["state"] == "paused" and after["claim"] is None
    assert after.get("zones_done") is None  # the wave is finished by the resume, not skipped


async def test_two_settlers_at_once_write_the_end_once(store: Stores) -> None:
    now = time.time()
    ranges, _ = await split_parent(store, now, ["m"])
    states = [NotificationState.SCHEDULED, NotificationState.DISPATCHING]
    token, records = await store.claims.claim_due("b", now, now + 30, now, 10, LANE_RANGE, states)
    for record in records:
        finished = await store.leases.finish(record.id, token, NotificationState.DONE, None, now, announce=False)
        assert finished is not None
    both = await asyncio.gather(*(ranges.settle(PARENT, now, now) for _ in range(2)))
    assert sum(result is not None for result in both) == 1, both
