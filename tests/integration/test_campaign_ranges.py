"""One campaign over every replica: a large audience is cut into ranges (store/ranges.py), each claimed under
the lease protocol by whichever replica has room; pause, resume and cancel move the ranges with the campaign;
the campaign's counts are the sum of its ranges', settled and announced once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer

from pushsvc.model import NotificationState
from pushsvc.service import PushService
from pushsvc.store.ranges import LANE_RANGE
from tests.integration.stack import Stack, wait_until
from tests.integration.stores import Stores
from tests.integration.test_campaigns import api, campaign, received, register_many, token
from tests.integration.test_range_store import PARENT, split_parent

# Small ranges, one at a time per replica and a quick safety poll, so a few hundred devices make a campaign
# that several replicas share within a second or two.
SPLIT = {"range_devices": 50, "max_active_ranges": 1, "poll_interval_seconds": 0.3, "chunk_size": 10}


async def ranges_of(stack: Stack, campaign_id: str) -> list[dict]:
    parent = await stack.notification(f"campaign:{campaign_id}")
    assert parent is not None
    return await stack.db.notifications.find({"parent": parent["_id"]}).sort("_id", 1).to_list(None)


def holder(doc: dict) -> str:
    """The replica that last held a range (its claim token starts with the replica's name)."""
    return str(doc["released_claim"]).split("/")[0]


async def outcome_events(stack: Stack, campaign_id: str, timeout: float = 20.0, quiet: float = 2.0) -> list[dict]:
    """The outcome events of a campaign: waits for the first, then reads until the topic is quiet."""
    consumer = AIOKafkaConsumer(
        stack.kafka["outcomes_topic"], bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[dict] = []
    try:
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline and (not events or time.monotonic() - last < quiet):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event["id"] == f"campaign:{campaign_id}":
                        events.append(event)
                        last = time.monotonic()
    finally:
        await consumer.stop()
    return events


async def test_a_large_campaign_is_cut_into_ranges_that_every_replica_works(stack: Stack) -> None:
    services: list[PushService] = [await stack.start(dispatch=SPLIT) for _ in range(3)]
    tokens = [token(i, "c") for i in range(400)]
    await register_many(stack, tokens, tags=["promo"])
    stack.apns.set_default(delay=0.03)  # a range of 50 takes a few tenths of a second

    status, created = await api(stack, "POST", "/v1/campaigns", campaign("wide"))
    assert status == 201 and created["progress"]["audience_estimate"] == 400
    doc = await stack.wait_finished("campaign:wide", timeout=60)

    assert received(stack) == Counter({t: 1 for t in tokens})  # every device once
    assert doc["state"] == "done" and doc["settled"] and doc["ranges"] == 8
    assert doc["counts"]["targeted"] == doc["counts"]["delivered"] == 400
    ranges = await ranges_of(stack, "wide")
    assert len(ranges) == 8 and all(r["state"] == "done" for r in ranges)
    # Cut where the tokens are (sequential here, not spread over the string space): no range is empty or
    # holds more than twice its share.
    sizes = [r["counts"]["delivered"] for r in ranges]
    assert sum(sizes) == 400 and min(sizes) > 0 and max(sizes) <= 100, sizes
    # Slices in token order, each after the previous one's end.
    assert [r["bounds"][0] for r in ranges[1:]] == [r["bounds"][1] for r in ranges[:-1]]
    assert ranges[0]["bounds"][0] is None and ranges[-1]["bounds"][1] is None
    assert {holder(r) for r in ranges} == {s.owner for s in services}, [holder(r) for r in ranges]
    # No range announced itself; the campaign once, with the sum.
    assert not any(r.get("event_pending") for r in ranges)
    (event,) = await outcome_events(stack, "wide")
    assert event["state"] == "done" and event["counts"]["delivered"] == 400
    status, view = await api(stack, "GET", "/v1/campaigns/wide")
    assert view["status"] == "done" and view["counts"]["delivered"] == 400 and view["progress"]["ratio"] == 1.0


async def campaign_under_way(stack: Stack, campaign_id: str, prefix: str, dispatch: dict[str, object]) -> list[str]:
    """Two replicas running a 200-device campaign cut into 4 ranges, slowed by the peer (0.1 s an answer), once
    20 devices have been sent; returns the audience's tokens."""
    for _ in range(2):
        await stack.start(dispatch=dispatch)
    tokens = [token(i, prefix) for i in range(200)]
    await register_many(stack, tokens, tags=["promo"])
    stack.apns.set_default(delay=0.1)
    await api(stack, "POST", "/v1/campaigns", campaign(campaign_id))
    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 20), 20)
    return tokens


async def test_pause_and_resume_move_every_range_and_each_device_is_sent_once(stack: Stack) -> None:
    tokens = await campaign_under_way(stack, "paced", "d", SPLIT)
    status, view = await api(stack, "POST", "/v1/campaigns/paced/pause")
    assert status == 200 and view["status"] == "paused"
    await asyncio.sleep(1.0)  # chunks in flight end
    paused_at = sum(received(stack).values())
    status, view = await api(stack, "GET", "/v1/campaigns/paced")
    assert view["counts"]["delivered"] == paused_at < 200  # the sum of the ranges so far
    assert {r["state"] for r in await ranges_of(stack, "paced")} <= {"paused", "done"}
    await asyncio.sleep(1.0)
    assert sum(received(stack).values()) == paused_at  # nothing while paused

    status, view = await api(stack, "POST", "/v1/campaigns/paced/resume")
    assert status == 200 and view["status"] == "dispatching"
    doc = await stack.wait_finished("campaign:paced", timeout=60)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 200
    assert received(stack) == Counter({t: 1 for t in tokens})


async def test_cancel_stops_every_range_and_the_campaign_is_announced_once_with_what_was_sent(
    stack: Stack,
) -> None:
    await campaign_under_way(stack, "halt", "e", {**SPLIT, "outcome_sweep_grace_seconds": 0.5})
    status, view = await api(stack, "POST", "/v1/campaigns/halt/cancel")
    assert status == 200 and view["status"] == "cancelled"

    async def settled() -> dict | None:
        doc = await stack.notification("campaign:halt")
        return doc if doc and doc.get("settled") else None

    doc = await wait_until(settled, 30)
    await asyncio.sleep(1.0)
    sent = received(stack)
    assert all(n == 1 for n in sent.values()) and sum(sent.values()) < 200
    assert doc["state"] == "cancelled" and doc["counts"]["delivered"] == sum(sent.values())
    assert {r["state"] for r in await ranges_of(stack, "halt")} <= {"cancelled", "done"}
    (event,) = await outcome_events(stack, "halt")
    assert event["state"] == "cancelled" and event["counts"]["delivered"] == sum(sent.values())


async def test_a_small_or_throttled_campaign_runs_whole(stack: Stack) -> None:
    await stack.start(dispatch=SPLIT)
    tokens = [token(i, "f") for i in range(60)]
    await register_many(stack, tokens, tags=["promo"])
    # 60 devices > 50 per range, but a throttle under 1,000/s is one replica's work: not cut.
    await api(stack, "POST", "/v1/campaigns", campaign("slow", throttle_per_second=500))
    doc = await stack.wait_finished("campaign:slow", timeout=30)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 60
    assert "ranges" not in doc and await ranges_of(stack, "slow") == []



async def test_a_large_segment_request_from_kafka_is_cut_too(stack: Stack) -> None:
    """Not counted at intake: its size is read from its first tokens (estimate_audience)."""
    for _ in range(2):
        await stack.start(dispatch=SPLIT)
    tokens = [token(i, "7") for i in range(300)]
    await register_many(stack, tokens, tags=["news"])
    await stack.publish({"id": "news-1", "app": "demo", "target": {"segment": {"tags_any": ["news"]}},
                         "message": {"title": "Headline"}})
    doc = await stack.wait_finished("news-1", timeout=60)
    assert doc["state"] == "done" and doc["ranges"] == 4 and doc["counts"]["delivered"] == 300
    assert received(stack) == Counter({t: 1 for t in tokens})


async def test_a_campaign_whose_last_range_runner_died_before_settling_is_settled_by_the_sweep_check(
    stack: Stack,
) -> None:
    """The backstop: every range is done but nobody settled the parent (its runner was killed in between)."""
    # No claim pass after the start: the test plays the replicas that split and ran the campaign.
    service = await stack.start(dispatch={**SPLIT, "poll_interval_seconds": 600.0})
    store = Stores.of(service)
    # Due an hour ahead: the service's own first claim pass, which may run after this record under load,
    # must not take the campaign or its ranges from the replicas the test plays.
    now = time.time() + 3600
    await split_parent(store, now, ["m"])
    token, records = await store.claims.claim_due("gone", now, now + 30, now, 10, LANE_RANGE,
                                           [NotificationState.SCHEDULED, NotificationState.DISPATCHING])
    for record in records:
        await store.leases.advance(record.id, token, 0, {"token": "x"}, {"targeted": 2, "delivered": 2})
        await store.leases.finish(record.id, token, NotificationState.DONE, None, now, announce=False)
    await store.collection.update_one({"_id": PARENT}, {"$set": {"settle_at": 0.0}})
    assert await service.settler.check_due() == 1
    parent = await store.notifications.get(PARENT)
    assert parent is not None and parent["state"] == "done" and parent["counts"]["delivered"] == 4
    (event,) = await outcome_events(stack, "split")
    assert event["state"] == "done" and event["counts"]["delivered"] == 4
    assert await service.settler.check_due() == 0  # settled once
