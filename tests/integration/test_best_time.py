"""Best-time delivery end to end (pushsvc, Tansu, nx-27017, the APNs peer), on an injected scheduling clock:
opened receipts (the real `POST /v1/receipts`) make each user's hour; a campaign with `schedule.best_time`
sends each device once, in its user's hour within the window, the others at the campaign's time, across a
restart between waves; duplicates and opens older than 30 days count for nothing; erasure forgets the state."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest
from pymongo import MongoClient

from pushsvc.service import PushService
from pushsvc.store.caps import user_key
from pushsvc.store.erasure import Erasure
from pushsvc.store.open_hours import RECORD_ROUND_SECONDS, OpenHours, OpensLate, tombstone
from tests.integration.stack import Stack, auth_headers, wait_until
from tests.integration.test_campaign_ranges import SPLIT, ranges_of
from tests.integration.test_campaigns import FakeClock, api, campaign, received, register_many, token

A, B, C, D, E = (token(i, "b") for i in range(1, 6))
USERS = {A: "ua", B: "ub", C: "uc", D: "ud", E: "ue"}


async def start_with_clock(stack: Stack, clock: FakeClock, dispatch: dict[str, Any] | None = None) -> PushService:
    # Retention long enough that the seeds, finished weeks ago on the injected clock, are not expired on the
    # real one (nx-27017 purges by the real clock on every read).
    settings = stack.settings(dispatch, extra={"retention": {"notification_days": 3650}})
    service = PushService(settings, clock=clock)
    stack.services.append(service)
    await service.start()
    return service


async def seed(stack: Stack, count: int) -> list[str]:
    """Notifications for receipts to name (a receipt must name a notification of the app): dry runs, so the
    peer receives nothing of them."""
    ids = [f"seed-{i}" for i in range(count)]
    for request_id in ids:
        body = {"id": request_id, "app": "demo", "target": {"tokens": [A]}, "message": {"title": "x"},
                "options": {"dry_run": True}}
        async with stack.http.post(stack.url("/v1/notifications"), json=body, headers=auth_headers()) as response:
            assert response.status == 201, await response.text()
    return ids


def opened(notification_id: str, at: str, **device: str) -> dict[str, Any]:
    return {"notification_id": notification_id, "event": "opened", "at": at, **device}


async def post_receipts(stack: Stack, receipts: list[dict[str, Any]]) -> dict[str, Any]:
    status, answer = await api(stack, "POST", "/v1/receipts", {"app": "demo", "receipts": receipts})
    assert status == 200, answer
    return answer


async def sent_to(stack: Stack, expected: set[str]) -> None:
    """Wait until the peer has received exactly `expected` so far (and nothing else)."""
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == expected), 10)
    await asyncio.sleep(0.3)  # nothing more arrives for this wave
    assert set(received(stack)) == expected, received(stack)


async def test_each_user_is_sent_once_in_their_best_hour_across_a_restart(stack: Stack) -> None:
    clock = FakeClock("2026-10-29T00:00:00+00:00")
    service = await start_with_clock(stack, clock)
    for device, user in USERS.items():
        await stack.register(device, "ios", tags=["promo"], user_id=user)
    n = await seed(stack, 8)

    clock.set("2026-12-01T09:00:00+00:00")
    answer = await post_receipts(stack, [
        # A opens at 14:00 UTC mostly (by token), once at 03:00; B at 03:00 (by user id).
        opened(n[0], "2026-11-27T14:10:00Z", token=A), opened(n[1], "2026-11-28T15:20:00+01:00", token=A),
        opened(n[2], "2026-11-29T03:00:00Z", token=A),
        opened(n[3], "2026-11-28T03:05:00Z", user_id="ub"), opened(n[4], "2026-11-29T03:40:00Z", user_id="ub"),
        # D opened only 31 days before the campaign: too old, no hour. C never opened.
        opened(n[5], "2026-10-31T05:00:00Z", token=D),
        # E: once at 06:00 and once at 05:00 (a tie: the earliest, 05), its 06:00 reported twice.
        opened(n[6], "2026-11-29T06:00:00Z", user_id="ue"), opened(n[7], "2026-11-30T05:00:00Z", user_id="ue"),
        opened(n[6], "2026-11-29T06:00:00Z", user_id="ue"),
    ])
    assert answer["counts"]["recorded"] == 8 and answer["counts"]["duplicate"] == 1, answer
    again = await post_receipts(stack, [opened(n[6], "2026-11-29T06:00:00Z", user_id="ue")])  # a retried batch
    assert again["results"] == ["duplicate"]
    # Nothing is written on the devices: each wave decides from the stored opens (scheduling/best_time.py).
    assert not [d async for d in stack.db.devices.find({"app": "demo", "best_hours": {"$exists": True}})]
    state = await stack.db.open_hours.find_one({"_id": {"$eq": user_key("demo", "u:ua")}})
    assert state is not None and len(state["opens"]) == 3
    assert "ua" not in str(state) and A not in str(state)  # keyed by a hash, like caps and receipts

    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "best", schedule={"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    assert view["schedule"]["best_time"] == {"window_hours": 24}
    await asyncio.sleep(0.5)
    assert not stack.apns.requests

    clock.set("2026-12-01T10:00:05+00:00")  # the campaign's time: C and D, who have no hour
    await sent_to(stack, {C, D})
    doc = await stack.notification("campaign:best")
    # Next the 11:00 wave (an hour nobody has: a wave that reads the audience and sends nothing).
    assert doc["zones_done"] == ["start"] and doc["due_at"] == clock.now - 5 + 3600

    # An open recorded during the campaign (A at 03:00 twice more would make 03 A's hour) moves nobody.
    await post_receipts(stack, [opened(n[3], "2026-12-01T03:10:00Z", token=A),
                                opened(n[4], "2026-12-01T03:20:00Z", token=A)])
    clock.set("2026-12-01T14:00:05+00:00")
    await sent_to(stack, {C, D, A})

    await stack.stop(service)  # between waves: a new replica takes the rest
    await start_with_clock(stack, clock)
    clock.set("2026-12-02T03:00:05+00:00")
    await sent_to(stack, {C, D, A, B})
    clock.set("2026-12-02T05:00:05+00:00")
    await sent_to(stack, {C, D, A, B, E})
    clock.set("2026-12-02T09:59:00+00:00")  # the last hour's wave (09:00) has gone: done
    doc = await stack.wait_finished("campaign:best")
    counts = doc["counts"]
    assert (doc["state"], counts["targeted"], counts["delivered"]) == ("done", 5, 5), doc
    assert received(stack) == Counter({C: 1, D: 1, A: 1, B: 1, E: 1})

    status, erased = await api(stack, "DELETE", "/v1/users/ua?app=demo")
    assert status == 200 and erased["deleted_devices"] == 1, erased
    # An erasure's tombstone: no opens left (an open being written meanwhile finds it and is dropped).
    forgotten = await stack.db.open_hours.find_one({"_id": {"$eq": user_key("demo", "u:ua")}})
    assert forgotten is not None and forgotten["erased"] and forgotten["opens"] == [], forgotten
    kept = await stack.db.open_hours.find_one({"_id": {"$eq": user_key("demo", "u:ub")}})
    assert kept is not None and not kept["erased"] and kept["opens"], kept


async def test_a_split_campaign_sends_each_range_in_its_users_hours_and_a_late_hour_is_expired(
    stack: Stack,
) -> None:
    clock = FakeClock("2026-10-29T00:00:00+00:00")
    await start_with_clock(stack, clock, SPLIT)
    early, late = token(0, "s"), token(1, "s")
    others = [token(i, "s") for i in range(2, 60)]
    await stack.register(early, "ios", tags=["promo"], user_id="u-early")
    await stack.register(late, "ios", tags=["promo"], user_id="u-late")
    await register_many(stack, others, tags=["promo"])
    n = await seed(stack, 2)
    clock.set("2026-12-01T09:00:00+00:00")
    await post_receipts(stack, [opened(n[0], "2026-11-30T14:10:00Z", user_id="u-early"),
                                opened(n[1], "2026-11-30T03:10:00Z", user_id="u-late")])
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "split", schedule={"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201 and view["progress"]["audience_estimate"] == 60, view

    clock.set("2026-12-01T10:00:05+00:00")  # every range's start wave: all but the two with an hour
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == set(others)), 15)
    assert len(await ranges_of(stack, "split")) > 1
    clock.set("2026-12-01T14:00:05+00:00")
    await sent_to(stack, {*others, early})
    clock.set("2026-12-02T03:00:05+00:00")
    await sent_to(stack, {*others, early, late})
    clock.set("2026-12-02T09:59:00+00:00")
    doc = await stack.wait_finished("campaign:split")
    assert (doc["state"], doc["counts"]["targeted"], doc["counts"]["delivered"]) == ("done", 60, 60), doc
    assert set(received(stack).values()) == {1}

    # Claimed an hour after its user's hour (the replicas were away): that wave is past its TTL, counted expired.
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "late", audience={"users": ["u-early"]}, options={"ttl_seconds": 600},
        schedule={"at": "2026-12-02T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    clock.set("2026-12-02T15:00:05+00:00")
    await wait_until(lambda: _counted(stack, "campaign:late", "expired"), 10)
    clock.set("2026-12-03T09:59:00+00:00")  # its last hour's wave gone
    doc = await stack.wait_finished("campaign:late")
    assert (doc["counts"]["targeted"], doc["counts"]["expired"], doc["counts"]["delivered"]) == (1, 1, 0), doc
    assert received(stack)[early] == 1


async def _counted(stack: Stack, notification_id: str, key: str) -> bool:
    doc = await stack.notification(notification_id)
    return doc is not None and bool(doc.get("counts", {}).get(key))


async def test_best_time_input_is_checked_naming_the_field(stack: Stack) -> None:
    clock = FakeClock("2026-12-01T09:00:00+00:00")
    await start_with_clock(stack, clock)
    at = "2026-12-01T10:00:00Z"
    for extra, field in [
        ({"schedule": {"at": at, "best_time": {"window_hours": 0}}}, "schedule.best_time.window_hours"),
        ({"schedule": {"at": at, "best_time": {"window_hours": "24"}}}, "schedule.best_time.window_hours"),
        ({"schedule": {"at": at, "best_time": {"window": 24}}}, "schedule.best_time.window"),
        # Without a time there is nothing to spread (the waves count from it).
        ({"schedule": {"at": None, "best_time": {"window_hours": 24}}}, "schedule.at"),
        ({"schedule": {"at": "2026-12-01T10:00:00", "local_time": True, "best_time": {"window_hours": 24}}},
         "schedule.best_time"),
        ({"schedule": {"at": at, "best_time": {"window_hours": 24}}, "quiet_hours": {"start": "22:00", "end": "08:00"}},
         "schedule.best_time"),
    ]:
        status, answer = await api(stack, "POST", "/v1/campaigns", campaign("bad", **extra))
        assert status == 400 and answer["error"]["field"] == field, (extra, answer)
    assert (await api(stack, "GET", "/v1/campaigns/bad"))[0] == 404
    # The same id with another window is a conflict naming it.
    body = campaign("once", schedule={"at": at, "best_time": {"window_hours": 24}})
    assert (await api(stack, "POST", "/v1/campaigns", body))[0] == 201
    status, answer = await api(stack, "POST", "/v1/campaigns", {**body, "schedule": {"at": at, "best_time": {
        "window_hours": 12}}})
    assert status == 409 and answer["error"]["field"] == "schedule.best_time.window_hours", answer


async def test_devices_registered_or_moved_after_the_opens_are_sent_once_and_concurrent_opens_all_count(
    stack: Stack,
) -> None:
    """Each device's hour comes from its user's opens, never from the device: a phone registered after its
    user's opens goes in the user's hour (not at the start and again later), a device whose user changed goes
    in the new user's hour, and opens posted at once for one user are all kept."""
    clock = FakeClock("2026-11-20T00:00:00+00:00")
    await start_with_clock(stack, clock)
    old_phone, new_phone, shared = token(11, "b"), token(12, "b"), token(13, "b")
    await stack.register(old_phone, "ios", tags=["promo"], user_id="ua")
    await stack.register(shared, "ios", tags=["promo"])  # no user yet: its opens are its own
    n = await seed(stack, 6)
    clock.set("2026-11-30T09:00:00+00:00")
    # Three opens of ua posted at once, in three requests: all three are kept (none lost to a race).
    await asyncio.gather(*(post_receipts(stack, [opened(n[i], f"2026-11-2{i + 1}T14:0{i}:00Z", token=old_phone)])
                           for i in range(3)))
    state = await stack.db.open_hours.find_one({"_id": {"$eq": user_key("demo", "u:ua")}})
    assert state is not None and len(state["opens"]) == 3, state
    await post_receipts(stack, [opened(n[3], "2026-11-27T14:30:00Z", token=shared)])  # the device alone: 14
    await stack.register(new_phone, "ios", tags=["promo"], user_id="ua")  # after ua's opens
    await stack.register(shared, "ios", tags=["promo"], user_id="ub")  # now ub's device: ub's hour, 03
    await post_receipts(stack, [opened(n[4], "2026-11-27T03:00:00Z", user_id="ub"),
                                opened(n[5], "2026-11-28T03:00:00Z", user_id="ub")])

    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "moved", schedule={"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    clock.set("2026-12-01T10:00:05+00:00")
    await wait_until(lambda: stack.notification("campaign:moved"), 10)
    await asyncio.sleep(1.0)
    assert not received(stack)  # both of ua's phones wait for 14:00, the shared device for 03:00
    # An open of the new phone during the campaign moves nobody.
    await post_receipts(stack, [opened(n[0], "2026-12-01T10:01:00Z", token=new_phone)])
    clock.set("2026-12-01T14:00:05+00:00")
    await sent_to(stack, {old_phone, new_phone})
    clock.set("2026-12-02T03:00:05+00:00")
    await sent_to(stack, {old_phone, new_phone, shared})
    clock.set("2026-12-02T09:59:00+00:00")
    doc = await stack.wait_finished("campaign:moved")
    assert (doc["state"], doc["counts"]["targeted"], doc["counts"]["delivered"]) == ("done", 3, 3), doc
    assert received(stack) == Counter({old_phone: 1, new_phone: 1, shared: 1})


async def test_a_device_whose_user_changes_during_the_campaign_is_judged_by_its_user_at_the_campaigns_time(
    stack: Stack,
) -> None:
    """A login during the campaign moves a device to no other wave (the second review sent a phone at the start
    and again in its new user's hour, and left one out whose old user's hour was still ahead): each device goes
    in the wave of its user at T, or, registered after T, of its first user. Erasing a user takes their id out
    of the user changes a device keeps."""
    clock = FakeClock("2026-11-20T00:00:00+00:00")
    await start_with_clock(stack, clock)
    phone, other, moved = token(21, "b"), token(22, "b"), token(23, "b")
    late_install, late_login = token(24, "b"), token(25, "b")
    await stack.register(phone, "ios", tags=["promo"])  # a new install, no user, never opened anything
    await stack.register(other, "ios", tags=["promo"], user_id="ua")
    await stack.register(moved, "ios", tags=["promo"], user_id="uc")
    n = await seed(stack, 4)
    clock.set("2026-11-30T09:00:00+00:00")
    await post_receipts(stack, [opened(n[0], "2026-11-27T14:10:00Z", token=other),  # ua: 14:00
                                opened(n[1], "2026-11-28T16:20:00Z", token=moved),  # uc: 16:00
                                opened(n[2], "2026-11-28T12:20:00Z", user_id="ua"),
                                opened(n[3], "2026-11-29T14:20:00Z", user_id="ua")])
    await stack.register(token(26, "b"), "ios", user_id="ud")  # ud's hour: 12:00 (the device is not in promo)
    await post_receipts(stack, [opened(n[0], "2026-11-28T12:10:00Z", user_id="ud")])
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "login", schedule={"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    clock.set("2026-12-01T10:00:05+00:00")
    await sent_to(stack, {phone})  # no user, no hour: at the start
    clock.set("2026-12-01T11:00:00+00:00")
    await stack.register(phone, "ios", tags=["promo"], user_id="ua")  # its user logs in: ua's hour is ahead
    await stack.register(late_install, "ios", tags=["promo"])  # installed after T: its first user, nobody
    await stack.register(late_login, "ios", tags=["promo"], user_id="ua")  # installed after T with ua
    await stack.register(late_install, "ios", tags=["promo"], user_id="ua")  # then logs in
    clock.set("2026-12-01T12:00:05+00:00")
    await sent_to(stack, {phone})  # ud's wave: nobody of the campaign is ud's
    clock.set("2026-12-01T13:00:00+00:00")
    await stack.register(moved, "ios", tags=["promo"], user_id="ud")  # uc's device, now ud's (12:00 passed)
    clock.set("2026-12-01T14:00:05+00:00")
    await sent_to(stack, {phone, other, late_login})
    clock.set("2026-12-01T16:00:05+00:00")
    await sent_to(stack, {phone, other, late_login, moved})  # judged by uc, its user at T
    clock.set("2026-12-02T09:59:00+00:00")
    doc = await stack.wait_finished("campaign:login")
    assert received(stack) == Counter({phone: 1, other: 1, late_login: 1, moved: 1}), (received(stack), doc)

    status, erased = await api(stack, "DELETE", "/v1/users/uc?app=demo")
    assert status == 200 and erased["deleted_devices"] == 0, erased
    device = await stack.db.devices.find_one({"app": "demo", "token": moved})
    assert device["user_id"] == "ud" and [c["user"] for c in device["user_changes"]] == [None, "ud"], device


async def test_an_open_being_written_across_an_erasure_is_dropped_and_a_late_write_gives_up(stack: Stack) -> None:
    """An erasure landing between an open's read and its write (driven on the real server from inside the
    writer's clock) leaves the user erased: the open does not recreate their document. A write that cannot be
    done within RECORD_ROUND_SECONDS of its stamp gives up rather than land after a wave read without it."""
    service = await stack.start()
    hours = OpenHours(service.database)
    erasure = Erasure(service.database)
    key = user_key("demo", "u:ue")
    now = time.time()  # the documents' TTL (nx-27017 purges expired ones on each read) is on the real clock
    await hours.record("demo", [("u:ue", now - 4000, "first")], lambda: now - 3000)
    assert [o[2] for o in (await stack.db.open_hours.find_one({"_id": {"$eq": key}}))["opens"]] == ["first"]

    sync = MongoClient(stack.mongo_uri)
    calls = 0

    def erase_between_read_and_write() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:  # the round's check after its read: the erasure lands now, before the write
            sync[stack.database].open_hours.replace_one({"_id": {"$eq": key}}, tombstone(key, now - 2000), upsert=True)
        return now - 2000

    try:
        await hours.record("demo", [("u:ue", now - 2500, "second")], erase_between_read_and_write)
    finally:
        sync.close()
    state = await stack.db.open_hours.find_one({"_id": {"$eq": key}})
    assert state["erased"] and state["opens"] == [], state
    # An open whose write begins after the erasure is the user's new history.
    await hours.record("demo", [("u:ue", now - 1500, "third")], lambda: now - 1000)
    state = await stack.db.open_hours.find_one({"_id": {"$eq": key}})
    assert not state["erased"] and [o[2] for o in state["opens"]] == ["third"], state
    await erasure.forget_user_state("demo", "ue", [])
    assert (await stack.db.open_hours.find_one({"_id": {"$eq": key}}))["opens"] == []

    times = iter([now, now + RECORD_ROUND_SECONDS + 1])  # the round's stamp, then its check: too late
    with pytest.raises(OpensLate):
        await hours.record("demo", [("u:uf", now - 100, "late")], lambda: next(times))
    assert await stack.db.open_hours.find_one({"_id": user_key("demo", "u:uf")}) is None


async def test_a_throttled_wave_running_past_the_next_hour_does_not_expire_it(stack: Stack) -> None:
    """The start wave, throttled to 1 push/s, is still sending when the next hour's wave is due plus its TTL:
    that wave was made late by the campaign itself, so it is sent, not counted expired (the second review's
    finding: its users were never sent although the campaign began on time)."""
    clock = FakeClock("2026-11-20T00:00:00+00:00")
    await start_with_clock(stack, clock)
    hourly = token(40, "b")
    plain = [token(41 + i, "b") for i in range(4)]
    await stack.register(hourly, "ios", tags=["promo"], user_id="u11")
    await register_many(stack, plain, tags=["promo"])
    n = await seed(stack, 1)
    clock.set("2026-11-30T09:00:00+00:00")
    await post_receipts(stack, [opened(n[0], "2026-11-28T11:10:00Z", user_id="u11")])  # u11: 11:00
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "thr", throttle_per_second=1, options={"ttl_seconds": 60},
        schedule={"at": "2026-12-01T10:59:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    clock.set("2026-12-01T10:59:01+00:00")
    await wait_until(lambda: asyncio.sleep(0, len(received(stack)) >= 1), 10)
    clock.set("2026-12-01T11:02:00+00:00")  # the start wave is still sending (1/s): 11:00 + 60 s has passed
    await wait_until(lambda: asyncio.sleep(0, len(received(stack)) == 5), 20)
    clock.set("2026-12-02T10:58:00+00:00")
    doc = await stack.wait_finished("campaign:thr")
    assert (doc["counts"]["delivered"], doc["counts"]["expired"]) == (5, 0), doc["counts"]
    assert received(stack) == Counter(dict.fromkeys([hourly, *plain], 1))


async def test_a_split_campaigns_wave_begun_past_its_ttl_is_expired_in_its_range(stack: Stack) -> None:
    """Ranges decide a wave's lateness from their campaign's last progress (any range's chunk or wave end):
    nothing got on between the start waves and an hour claimed an hour late, so that hour is counted expired,
    while the start waves, on time, were sent."""
    clock = FakeClock("2026-10-29T00:00:00+00:00")
    await start_with_clock(stack, clock, SPLIT)
    early = token(0, "t")
    others = [token(i, "t") for i in range(1, 60)]
    await stack.register(early, "ios", tags=["promo"], user_id="u-early")
    await register_many(stack, others, tags=["promo"])
    n = await seed(stack, 1)
    clock.set("2026-12-01T09:00:00+00:00")
    await post_receipts(stack, [opened(n[0], "2026-11-30T14:10:00Z", user_id="u-early")])
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "splitlate", options={"ttl_seconds": 600},
        schedule={"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}}))
    assert status == 201, view
    clock.set("2026-12-01T10:00:05+00:00")
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == set(others)), 15)
    assert len(await ranges_of(stack, "splitlate")) > 1
    clock.set("2026-12-01T15:00:05+00:00")  # 14:00's wave claimed an hour late: nothing got on meanwhile
    await wait_until(lambda: _range_counted(stack, "splitlate", "expired"), 15)
    clock.set("2026-12-02T09:59:00+00:00")
    doc = await stack.wait_finished("campaign:splitlate")
    assert (doc["counts"]["targeted"], doc["counts"]["delivered"], doc["counts"]["expired"]) == (60, 59, 1), doc
    assert early not in received(stack) and set(received(stack).values()) == {1}


async def _range_counted(stack: Stack, campaign_id: str, key: str) -> bool:
    """A split campaign's counts are its ranges' until it settles."""
    return any(r.get("counts", {}).get(key) for r in await ranges_of(stack, campaign_id))


async def test_registrations_of_one_token_racing_with_different_users_record_every_change(stack: Stack) -> None:
    """Eight registrations of one new token at once, each with another user (or none), through two replicas:
    exactly one creates it (201), and the device's user is the last change it keeps, every registration's user
    among them: no change is written without being recorded."""
    clock = FakeClock("2026-12-01T09:00:00+00:00")
    services = [await start_with_clock(stack, clock), await start_with_clock(stack, clock)]
    phone = token(50, "b")
    users = [f"racer{i}" for i in range(7)] + [None]

    async def register(n: int, user: str | None) -> int:
        body = {"app": "demo", "token": phone, "platform": "ios", **({"user_id": user} if user else {})}
        url = f"http://127.0.0.1:{services[n % 2].port}/v1/devices"
        async with stack.http.post(url, json=body, headers=auth_headers()) as response:
            assert response.status in (200, 201), await response.text()
            return response.status

    statuses = await asyncio.gather(*(register(n, user) for n, user in enumerate(users)))
    assert sorted(statuses).count(201) == 1, statuses
    device = await stack.db.devices.find_one({"app": "demo", "token": phone})
    changes = [c["user"] for c in device.get("user_changes") or []]
    assert changes, device  # the token was registered with several users: changes are kept
    assert changes[-1] == device.get("user_id"), device
    # Each registration either created the device or recorded its user as a change (the first entry is its
    # first user, from time 0).
    assert set(users) == set(changes), (changes, users)
    assert all(a != b for a, b in pairwise(changes)), changes
