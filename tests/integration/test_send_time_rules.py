"""Send-time rules end to end: a campaign's past `schedule.at` is refused (or, in local time, leaves out the
zones where it has passed), `ttl_seconds` counts from each wave's actual send, and a wave, a campaign or a
producer's push that would go out later than its TTL is counted `expired`, not sent.

Campaigns run on an injected scheduling clock (the API judges `schedule.at` by it too); what providers are
given as an expiry is on the real clock, as a provider reads it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from tests.integration.stack import Stack, auth_headers, wait_until
from tests.integration.test_campaigns import FakeClock, api, campaign, received, start_with_clock, token


async def counted(stack: Stack, notification_id: str, key: str, value: int) -> dict:
    async def check() -> dict | None:
        doc = await stack.notification(notification_id)
        return doc if doc is not None and doc["counts"].get(key) == value else None

    return await wait_until(check, 15)


async def test_a_past_schedule_is_refused_naming_schedule_at_and_a_minute_late_means_now(stack: Stack) -> None:
    clock = FakeClock("2026-12-01T10:00:00+00:00")
    await start_with_clock(stack, clock)
    device = token(1, "p")
    await stack.register(device, "ios", tags=["promo"])

    late = campaign("late", schedule={"at": "2026-12-01T09:00:00Z"})
    status, answer = await api(stack, "POST", "/v1/campaigns", late)
    assert status == 400, answer
    assert answer["error"]["field"] == "schedule.at"
    assert "past" in answer["error"]["message"] and "2026-12-01T10:00:00" in answer["error"]["message"]
    assert (await api(stack, "GET", "/v1/campaigns/late"))[0] == 404  # nothing recorded
    status, answer = await api(stack, "POST", "/v1/campaigns", campaign(
        "everywhere", schedule={"at": "2026-11-29T09:00:00", "local_time": True}))
    assert status == 400 and answer["error"]["field"] == "schedule.at", answer
    assert "every timezone" in answer["error"]["message"]

    # 30 s ago is within the grace: sent now.
    status, view = await api(stack, "POST", "/v1/campaigns", campaign("now", schedule={"at": "2026-12-01T09:59:30Z"}))
    assert status == 201, view
    doc = await stack.wait_finished("campaign:now")
    assert doc["counts"]["delivered"] == 1 and received(stack) == Counter({device: 1})

    # The README's example, a local-time campaign a year ahead: accepted, nothing left out, nothing sent yet.
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "next-year", schedule={"at": "2027-11-26T09:00:00", "local_time": True}))
    assert status == 201 and view["schedule"]["zones_passed"] == 0, view

    # A repeat is answered as created even once its time has passed (a retry after a timeout).
    clock.set("2026-12-01T11:00:00+00:00")
    status, again = await api(stack, "POST", "/v1/campaigns", campaign("now", schedule={"at": "2026-12-01T09:59:30Z"}))
    assert status == 200 and again["status"] == "done", again


async def test_local_time_that_has_passed_in_some_zones_goes_only_where_it_is_ahead(stack: Stack) -> None:
    clock = FakeClock("2026-12-01T10:00:00+00:00")  # 09:00 has passed from UTC eastwards
    await start_with_clock(stack, clock)
    zones = {"Asia/Tokyo": token(1, "z"), "Europe/Paris": token(2, "z"), "America/New_York": token(3, "z")}
    for zone, device in zones.items():
        await stack.register(device, "ios", tags=["promo"], timezone=zone)
    await stack.register(token(4, "z"), "ios", tags=["promo"])  # no timezone: UTC, passed
    body = campaign("morning", schedule={"at": "2026-12-01T09:00:00", "local_time": True})
    status, view = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 201, view
    assert view["schedule"]["zones_passed"] > 100  # every zone from UTC eastwards
    # Due when the first zone still ahead reaches 09:00 (the Azores, -1: 10:00 UTC), not hours ago.
    assert view["next_run_at"] >= "2026-12-01T10:00:00"

    await asyncio.sleep(1.0)
    assert not stack.apns.requests
    clock.set("2026-12-01T14:00:30+00:00")  # 09:00:30 in New York
    await wait_until(lambda: asyncio.sleep(0, bool(stack.apns.requests)), 10)
    clock.set("2026-12-02T12:00:00+00:00")  # 09:00 has come everywhere
    doc = await stack.wait_finished("campaign:morning")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 1 and doc["counts"]["targeted"] == 1
    assert received(stack) == Counter({zones["America/New_York"]: 1})
    status, again = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 200 and again["schedule"]["zones_passed"] == view["schedule"]["zones_passed"]


async def test_ttl_counts_from_each_waves_send_and_a_late_wave_is_counted_expired(stack: Stack) -> None:
    clock = FakeClock("2026-11-30T18:00:00+00:00")
    await start_with_clock(stack, clock)
    tokyo, shanghai, new_york = token(1, "t"), token(2, "t"), token(3, "t")
    await stack.register(tokyo, "ios", tags=["promo"], timezone="Asia/Tokyo")  # 09:00 = 00:00 UTC
    await stack.register(shanghai, "ios", tags=["promo"], timezone="Asia/Shanghai")  # 09:00 = 01:00 UTC
    await stack.register(new_york, "ios", tags=["promo"], timezone="America/New_York")  # 09:00 = 14:00 UTC
    status, view = await api(stack, "POST", "/v1/campaigns", campaign(
        "timely", schedule={"at": "2026-12-01T09:00:00", "local_time": True}, options={"ttl_seconds": 600}))
    assert status == 201 and view["schedule"]["zones_passed"] == 0, view

    # The replicas were away: the claim comes at 01:00:30 UTC, when Tokyo's 09:00 is an hour old (past its TTL)
    # and Shanghai's 30 s old. Tokyo's device is counted expired, not sent; Shanghai's wave goes.
    clock.set("2026-12-01T01:00:30+00:00")
    await counted(stack, "campaign:timely", "expired", 1)
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {shanghai}), 10)
    clock.set("2026-12-01T14:00:30+00:00")  # New York's wave, on time
    await wait_until(lambda: asyncio.sleep(0, set(received(stack)) == {shanghai, new_york}), 10)
    clock.set("2026-12-02T12:00:00+00:00")
    doc = await stack.wait_finished("campaign:timely")
    assert doc["state"] == "done", doc
    counts = doc["counts"]
    assert (counts["targeted"], counts["delivered"], counts["expired"]) == (3, 2, 1), counts
    assert received(stack) == Counter({shanghai: 1, new_york: 1})
    status, view = await api(stack, "GET", "/v1/campaigns/timely")
    assert status == 200 and view["counts"]["expired"] == 1 and view["counts"]["pending"] == 0

    # Each wave's APNs expiry is its own send plus the TTL, on the real clock (the scheduling clock here is
    # days behind it): not the campaign's due time plus the TTL.
    for request in stack.apns.requests:
        expiry = int(request.headers["apns-expiration"])
        assert request.time + 600 - 5 <= expiry <= request.time + 600 + 1, (expiry, request.time)


async def _post(stack: Stack, body: dict[str, Any]) -> dict:
    async with stack.http.post(stack.url("/v1/notifications"), json=body, headers=auth_headers()) as response:
        answer = await response.json()
        assert response.status in (200, 201, 202), answer
        return answer


def _push(request_id: str, device: str, send_at: float, ttl: int) -> dict[str, Any]:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(send_at))
    return {"id": request_id, "app": "demo", "target": {"tokens": [device]}, "message": {"title": "Code 1234"},
            "options": {"send_at": at, "ttl_seconds": ttl}}


async def test_a_producers_push_claimed_past_its_ttl_is_expired_and_one_within_the_grace_is_sent(
    stack: Stack,
) -> None:
    await stack.start()
    late, prompt = token(1, "x"), token(2, "x")
    await stack.register(late, "ios")
    await stack.register(prompt, "ios")
    now = time.time()
    await _post(stack, _push("late-code", late, now - 120, 30))  # due 2 minutes ago, worth 30 s
    await _post(stack, _push("prompt-code", prompt, now - 10, 0))  # "now or never", 10 s late: within 30 s
    expired = await stack.wait_finished("late-code")
    sent = await stack.wait_finished("prompt-code")
    assert (expired["state"], expired["counts"]["expired"], expired["counts"]["delivered"]) == ("done", 1, 0)
    assert (sent["counts"]["delivered"], sent["counts"]["expired"]) == (1, 0)
    assert received(stack) == Counter({prompt: 1})
    (request,) = stack.apns.requests
    assert request.headers["apns-expiration"] == "0"  # TTL 0: once, not stored
    async with stack.http.get(stack.url("/metrics")) as response:
        assert 'pushsvc_deliveries_total{app="demo",outcome="expired",provider="none"}' in await response.text()
