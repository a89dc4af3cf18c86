"""Campaigns end to end: throttle, pause/resume, cancel mid-campaign, local time and quiet hours across
timezones with an injected clock, and a restart mid-campaign that loses nothing and sends nothing twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from pushsvc.service import PushService
from tests.integration.stack import Stack, auth_headers, consume, wait_until


class FakeClock:
    """Epoch seconds that only move when the test says so; the API, scheduler and runner all read it."""

    def __init__(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).timestamp()


def token(i: int, prefix: str = "e") -> str:
    return f"{prefix}{i:063x}"


async def start_with_clock(
    stack: Stack, clock: Callable[[], float], dispatch: dict[str, Any] | None = None
) -> PushService:
    service = PushService(stack.settings(dispatch), clock=clock)
    stack.services.append(service)
    await service.start()
    return service


async def register_many(stack: Stack, tokens: list[str], **fields: Any) -> None:
    await asyncio.gather(*(stack.register(t, "ios", **fields) for t in tokens))


async def api(stack: Stack, method: str, path: str, body: Any = None, service: PushService | None = None
              ) -> tuple[int, Any]:
    async with stack.http.request(method, stack.url(path, service), json=body, headers=auth_headers()) as response:
        return response.status, await response.json()


def campaign(campaign_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": campaign_id, "name": f"Campaign {campaign_id}", "app": "demo",
            "audience": {"segment": {"tags_any": ["promo"]}},
            "message": {"title": "Sale", "body": "Everything must go",
                        "localized": {"fr": {"title": "Soldes"}, "ja": {"title": "セール"}}}, **extra}


def received(stack: Stack) -> Counter[str]:
    return Counter(r.token for r in stack.apns.requests)


async def test_throttle_rate_idempotent_create_progress_and_list(stack: Stack) -> None:
    await stack.start()
    tokens = [token(i) for i in range(12)]
    await register_many(stack, tokens, tags=["promo"], locale="fr-FR")
    status, created = await api(stack, "POST", "/v1/campaigns", campaign("spring", throttle_per_second=4))
    assert status == 201, created
    assert created["progress"]["audience_estimate"] == 12 and created["throttle_per_second"] == 4
    status, again = await api(stack, "POST", "/v1/campaigns", campaign("spring", throttle_per_second=4))
    assert status == 200 and again["id"] == "spring"

    doc = await stack.wait_finished("campaign:spring")
    assert doc["state"] == "done"
    assert received(stack) == Counter({t: 1 for t in tokens})
    times = sorted(r.time for r in stack.apns.requests)
    # 4 per second: no one-second window at the peer holds a fifth delivery.
    assert all(times[i + 4] - times[i] >= 0.999 for i in range(len(times) - 4)), times
    assert times[-1] - times[0] >= 1.8
    assert stack.apns.requests[0].body["aps"]["alert"]["title"] == "Soldes"  # per-locale variant

    status, view = await api(stack, "GET", "/v1/campaigns/spring")
    assert status == 200
    assert view["status"] == "done" and view["counts"]["delivered"] == 12 and view["counts"]["pending"] == 0
    assert view["progress"]["ratio"] == 1.0
    status, listing = await api(stack, "GET", "/v1/campaigns?app=demo&status=done")
    assert [c["id"] for c in listing["campaigns"]] == ["spring"]
    async with stack.http.get(stack.url("/metrics")) as response:
        assert 'pushsvc_campaign_progress_ratio{app="demo",campaign="spring"} 1.0' in await response.text()


def busiest_second(times: list[float], rate: int) -> float:
    """The shortest span of `rate` + 1 consecutive arrivals: under a second means some one-second window at the
    peer held more than `rate`."""
    times = sorted(times)
    return min(times[i + rate] - times[i] for i in range(len(times) - rate))


async def test_throttle_holds_in_every_second_including_the_first(stack: Stack) -> None:
    """At 50/s the rate holds at the peer in every one-second window, the first included: pacing chunk starts
    from the run's start let the first two bursts land 0.84-0.95 s apart (its first chunk's read and the new
    connections used up part of the first second)."""
    await stack.start()
    tokens = [token(i, "c") for i in range(160)]
    await register_many(stack, tokens, tags=["promo"])
    status, created = await api(stack, "POST", "/v1/campaigns", campaign("steady", throttle_per_second=50))
    assert status == 201, created
    doc = await stack.wait_finished("campaign:steady", timeout=30)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 160
    assert received(stack) == Counter({t: 1 for t in tokens})
    times = [r.time for r in stack.apns.requests]
    assert busiest_second(times, 50) >= 0.999, sorted(times)
    # ... and the throttle is a rate, not a pause: 160 at 50/s take a little over 2 seconds, not much more.
    assert 2.0 <= max(times) - min(times) <= 6.0


async def test_cancel_mid_campaign_stops_sending(stack: Stack) -> None:
    await stack.start()
    tokens = [token(i, "a") for i in range(10)]
    await register_many(stack, tokens, tags=["promo"])
    status, _ = await api(stack, "POST", "/v1/campaigns", campaign("flash", throttle_per_second=2))
    assert status == 201
    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 2), 10)
    status, view = await api(stack, "POST", "/v1/campaigns/flash/cancel")
    assert status == 200 and view["status"] == "cancelled"
    doc = await stack.wait_finished("campaign:flash")
    assert doc["state"] == "cancelled"
    await asyncio.sleep(1.5)  # two more throttle periods: nothing else goes out
    sent = received(stack)
    assert 2 <= sum(sent.values()) <= 4 and all(n == 1 for n in sent.values())
    final = await stack.notification("campaign:flash")
    assert final["state"] == "cancelled" and final["counts"]["delivered"] == sum(sent.values())
    assert final["lease_owner"] is None
    status, answer = await api(stack, "POST", "/v1/campaigns/flash/resume")
    assert status == 409 and answer["error"]["code"] == "invalid_state"


async def test_pause_then_resume_sends_each_device_once(stack: Stack) -> None:
    await stack.start()
    tokens = [token(i, "b") for i in range(6)]
    await register_many(stack, tokens, tags=["promo"])
    await api(stack, "POST", "/v1/campaigns", campaign("weekly", throttle_per_second=2))
    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 2), 10)
    status, view = await api(stack, "POST", "/v1/campaigns/weekly/pause")
    assert status == 200 and view["status"] == "paused"
    await asyncio.sleep(1.5)
    paused_at = sum(received(stack).values())
    assert paused_at < 6
    await asyncio.sleep(1.0)
    assert sum(received(stack).values()) == paused_at  # nothing while paused
    status, view = await api(stack, "POST", "/v1/campaigns/weekly/resume")
    assert status == 200 and view["status"] == "scheduled"
    doc = await stack.wait_finished("campaign:weekly")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 6
    assert received(stack) == Counter({t: 1 for t in tokens})


async def test_local_time_delivery_across_timezones(stack: Stack) -> None:
    clock = FakeClock("2026-11-30T18:00:00+00:00")
    await start_with_clock(stack, clock)
    zones = {"Asia/Tokyo": token(1, "c"), "Europe/Paris": token(2, "c"), "America/New_York": token(3, "c")}
    for zone, device in zones.items():
        await stack.register(device, "ios", tags=["promo"], timezone=zone)
    utc_device = token(4, "c")
    await stack.register(utc_device, "ios", tags=["promo"])  # no timezone: UTC
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "morning", schedule={"at": "2026-12-01T09:00:00", "local_time": True}))
    assert status == 201 and view["status"] == "scheduled", view

    async def reached(expected: set[str]) -> None:
        await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == expected), 10)
        await asyncio.sleep(0.5)  # and nothing more in this wave
        assert set(received(stack)) == expected

    await asyncio.sleep(0.5)
    assert not stack.apns.requests  # nobody's 09:00 yet
    clock.set("2026-12-01T00:00:30+00:00")  # 09:00:30 in Tokyo
    await reached({zones["Asia/Tokyo"]})
    clock.set("2026-12-01T08:00:30+00:00")  # 09:00:30 in Paris
    await reached({zones["Asia/Tokyo"], zones["Europe/Paris"]})
    clock.set("2026-12-01T09:00:30+00:00")  # 09:00:30 UTC
    await reached({zones["Asia/Tokyo"], zones["Europe/Paris"], utc_device})
    clock.set("2026-12-01T14:00:30+00:00")  # 09:00:30 in New York
    await reached(set(zones.values()) | {utc_device})
    clock.set("2026-12-02T00:00:00+00:00")  # every zone has had its 09:00
    doc = await stack.wait_finished("campaign:morning")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 4
    assert received(stack) == Counter({t: 1 for t in [*zones.values(), utc_device]})
    times = {r.token: r.time for r in stack.apns.requests}
    order = [zones["Asia/Tokyo"], zones["Europe/Paris"], utc_device, zones["America/New_York"]]
    assert sorted(order, key=times.__getitem__) == order


async def test_quiet_hours_defer_devices_until_their_morning(stack: Stack) -> None:
    clock = FakeClock("2026-12-01T14:00:00+00:00")  # 23:00 in Tokyo, 09:00 in New York
    await start_with_clock(stack, clock)
    tokyo, new_york = token(1, "d"), token(2, "d")
    await stack.register(tokyo, "ios", tags=["promo"], timezone="Asia/Tokyo")
    await stack.register(new_york, "ios", tags=["promo"], timezone="America/New_York")
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "polite", quiet_hours={"start": "22:00", "end": "08:00"}))
    assert status == 201, view
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {new_york}), 10)
    doc = await wait_until(lambda: _state(stack, "campaign:polite", "scheduled"), 10)
    assert doc["due_at"] > clock.now  # rescheduled for when a deferred zone's quiet hours end
    await asyncio.sleep(0.5)
    assert set(received(stack)) == {new_york}
    clock.set("2026-12-01T23:00:30+00:00")  # 08:00:30 in Tokyo
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {new_york, tokyo}), 10)
    clock.set("2026-12-02T01:00:00+00:00")
    doc = await stack.wait_finished("campaign:polite")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 2
    assert received(stack) == Counter({tokyo: 1, new_york: 1})


async def test_a_deferred_wave_is_claimed_when_its_quiet_hours_end_not_at_the_safety_poll(stack: Stack) -> None:
    # A clock that runs in real time from 07:59:57 in Tokyo (17:59:57 in New York); the safety poll is 60 s
    # away, so Tokyo's wave reaches the provider in time only if the rescheduled run woke the claim loop.
    offset = datetime.fromisoformat("2026-12-01T22:59:57+00:00").timestamp() - time.time()
    await start_with_clock(stack, lambda: time.time() + offset, dispatch={"poll_interval_seconds": 60.0})
    tokyo, new_york = token(1, "w"), token(2, "w")
    await stack.register(tokyo, "ios", tags=["promo"], timezone="Asia/Tokyo")
    await stack.register(new_york, "ios", tags=["promo"], timezone="America/New_York")
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "dawn", quiet_hours={"start": "22:00", "end": "08:00"}))
    assert status == 201, view
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {new_york}), 10)
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {new_york, tokyo}), 10)
    assert received(stack) == Counter({tokyo: 1, new_york: 1})
    eight_in_tokyo = datetime.fromisoformat("2026-12-01T23:00:00+00:00").timestamp() - offset
    (sent,) = [r for r in stack.apns.requests if r.token == tokyo]
    assert eight_in_tokyo - 0.05 <= sent.time < eight_in_tokyo + 3.0, sent.time - eight_in_tokyo


async def test_a_scheduled_campaign_is_claimed_at_its_due_time_not_at_the_safety_poll(stack: Stack) -> None:
    """Intake wakes the claim loop for a campaign's `schedule.at`, as for any request it records unclaimed."""
    service = await stack.start(dispatch={"poll_interval_seconds": 60.0})
    await stack.register(token(1, "s"), "ios", tags=["promo"])
    send_at = service.server_clock.now() + 2.0
    at = datetime.fromtimestamp(send_at, UTC).isoformat()
    status, view = await api(stack, "POST", "/v1/campaigns", campaign("at-two", schedule={"at": at}))
    assert status == 201 and view["status"] == "scheduled", view
    doc = await stack.wait_finished("campaign:at-two", timeout=10)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
    (sent,) = stack.apns.requests
    assert send_at - 0.05 <= sent.time < send_at + 3.0, sent.time - send_at


async def _state(stack: Stack, notification_id: str, state: str) -> dict | None:
    doc = await stack.notification(notification_id)
    return doc if doc and doc["state"] == state else None


async def test_restart_mid_campaign_loses_nothing_and_sends_nothing_twice(stack: Stack) -> None:
    first = await stack.start(dispatch={"drain_timeout_seconds": 5.0})
    tokens = [token(i, "f") for i in range(12)]
    await register_many(stack, tokens, tags=["promo"])
    status, _ = await api(stack, "POST", "/v1/campaigns", campaign("restart", throttle_per_second=3))
    assert status == 201
    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 3), 10)
    await stack.stop(first)  # graceful: the chunk in flight finishes, the cursor is saved, the lease released
    stopped_at = sum(received(stack).values())
    assert stopped_at < 12
    doc = await stack.notification("campaign:restart")
    assert doc["lease_owner"] is None and doc["state"] == "dispatching"
    assert doc["counts"]["delivered"] == stopped_at

    await stack.start(dispatch={"drain_timeout_seconds": 5.0})
    doc = await stack.wait_finished("campaign:restart")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 12
    assert received(stack) == Counter({t: 1 for t in tokens})


async def test_two_replicas_never_send_the_same_chunk(stack: Stack) -> None:
    await stack.start()
    await stack.start()
    tokens = [token(i, "9") for i in range(10)]
    await register_many(stack, tokens, tags=["promo"])
    status, _ = await api(stack, "POST", "/v1/campaigns", campaign("pair", throttle_per_second=5))
    assert status == 201
    doc = await stack.wait_finished("campaign:pair")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 10
    assert received(stack) == Counter({t: 1 for t in tokens})


async def test_cancelling_a_scheduled_campaign_publishes_its_outcome_event(stack: Stack) -> None:
    """Nobody is running it, so no runner announces it: the outcome sweep does."""
    await stack.start(dispatch={"outcome_sweep_grace_seconds": 0.2})
    await register_many(stack, [token(1, "s")], tags=["promo"])
    status, view = await api(stack, "POST", "/v1/campaigns",
                             campaign("later", schedule={"at": "2099-01-01T09:00:00Z"}))
    assert status == 201 and view["status"] == "scheduled", view
    status, view = await api(stack, "POST", "/v1/campaigns/later/cancel")
    assert status == 200 and view["status"] == "cancelled"
    (record,) = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1, timeout=20)
    event = orjson.loads(record.value)
    assert (event["id"], event["state"], event["counts"]["delivered"]) == ("campaign:later", "cancelled", 0)
    assert stack.apns.requests == []
