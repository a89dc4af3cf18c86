"""Frequency caps end to end: at most N capped pushes per user in a rolling window, counted once per user
whatever their devices, held across a restart and between replicas racing for a user's last slot;
transactional categories exempt; a capped device counted `capped` and never sent."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from pushsvc.config import CapLimit, FrequencyCapSettings
from pushsvc.store.caps import FrequencyCaps
from tests.integration.stack import Stack, auth_headers
from tests.integration.stores import Stores
from tests.integration.test_campaigns import api, campaign, received, token

WINDOW_SECONDS = 4.0


def caps(max_per_window: int, window_seconds: float = 24 * 3600.0) -> dict[str, Any]:
    return {"frequency_caps": {
        "limits": [{"max": max_per_window, "window_hours": window_seconds / 3600}, {"max": 50, "window_hours": 168}],
        "categories": ["promo"], "exempt_categories": ["orders"],
    }}


async def run_campaign(stack: Stack, campaign_id: str, **extra: Any) -> dict:
    status, created = await api(stack, "POST", "/v1/campaigns", campaign(campaign_id, **extra))
    assert status == 201, created
    return await stack.wait_finished(f"campaign:{campaign_id}", timeout=30)


async def push(stack: Stack, request_id: str, user: str, category: str | None) -> dict:
    body = {"id": request_id, "app": "demo", "target": {"users": [user]},
            "message": {"title": "Hi", **({"category": category} if category else {})}}
    async with stack.http.post(stack.url("/v1/notifications"), json=body, headers=auth_headers()) as response:
        assert response.status in (200, 201, 202), await response.text()
    return await stack.wait_finished(request_id)


async def test_a_user_gets_at_most_the_cap_across_campaigns_requests_and_a_restart(stack: Stack) -> None:
    service = await stack.start(providers=caps(2))
    devices = {token(i, "f"): f"u{i % 8}" for i in range(12)}  # u0..u3 have two devices each
    await asyncio.gather(*(stack.register(t, "ios", tags=["promo"], user_id=u) for t, u in devices.items()))

    first = await run_campaign(stack, "one")
    assert (first["counts"]["delivered"], first["counts"]["capped"]) == (12, 0)
    await stack.stop(service)  # the count of each user's pushes is in MongoDB, not in a replica
    await stack.start(providers=caps(2))
    # An exempt category and an uncapped request go whatever the caps say; a capped category counts.
    assert (await push(stack, "order-1", "u0", "orders"))["counts"]["delivered"] == 2
    assert (await push(stack, "plain-1", "u0", None))["counts"]["delivered"] == 2
    assert (await push(stack, "promo-1", "u1", "promo"))["counts"]["delivered"] == 2  # u1's second
    second = await run_campaign(stack, "two")
    # u1 had two already: both its devices capped; everyone else's second push goes (once per user, not device).
    assert (second["counts"]["delivered"], second["counts"]["capped"]) == (10, 2), second["counts"]
    third = await run_campaign(stack, "three")
    assert (third["counts"]["targeted"], third["counts"]["capped"], third["counts"]["delivered"]) == (12, 12, 0)
    assert (await push(stack, "promo-2", "u2", "promo"))["counts"]["capped"] == 2

    per_device = received(stack)
    # one + two (+ u1's promo, - u1's campaign two) + u0's order and plain push: never a third capped push.
    expected = {t: 2 + (2 if devices[t] == "u0" else 0) for t in devices}
    assert per_device == Counter(expected), per_device
    status, view = await api(stack, "GET", "/v1/campaigns/three")
    assert status == 200 and view["counts"]["capped"] == 12 and view["counts"]["pending"] == 0
    # Erasing a user forgets their record too (nothing derived from them stays).
    assert await stack.db.frequency.count_documents({}) == 8
    status, _ = await api(stack, "DELETE", "/v1/users/u0?app=demo")
    assert status == 200 and await stack.db.frequency.count_documents({}) == 7


async def test_replicas_racing_give_each_user_their_last_slot_once(stack: Stack) -> None:
    await stack.start(providers=caps(1))
    await stack.start(providers=caps(1))
    devices = {token(i, "r"): f"u{i}" for i in range(30)}
    await asyncio.gather(*(stack.register(t, "android", tags=["promo"], user_id=u) for t, u in devices.items()))
    # Two campaigns at once, each taken by whichever replica claims it: one push per user in all.
    created = await asyncio.gather(*(api(stack, "POST", "/v1/campaigns", campaign(c)) for c in ("left", "right")))
    assert [status for status, _ in created] == [201, 201]
    left, right = [await stack.wait_finished(f"campaign:{c}", timeout=30) for c in ("left", "right")]
    assert left["counts"]["delivered"] + right["counts"]["delivered"] == 30
    assert left["counts"]["capped"] + right["counts"]["capped"] == 30
    assert Counter(r.token for r in stack.fcm.requests) == Counter(dict.fromkeys(devices, 1))


async def test_the_window_rolls(stack: Stack) -> None:
    await stack.start(providers=caps(1, WINDOW_SECONDS))
    device = token(1, "w")
    await stack.register(device, "ios", tags=["promo"], user_id="u1")
    started = time.monotonic()
    assert (await run_campaign(stack, "early"))["counts"]["delivered"] == 1
    assert (await run_campaign(stack, "soon"))["counts"]["capped"] == 1
    await asyncio.sleep(max(0.0, started + WINDOW_SECONDS + 0.5 - time.monotonic()))
    assert (await run_campaign(stack, "later"))["counts"]["delivered"] == 1
    assert received(stack) == Counter({device: 2})


async def test_many_writers_racing_for_the_same_users_admit_each_exactly_up_to_the_cap(
    notification_store: Stores,
) -> None:
    """Eight concurrent admissions (as eight replicas' chunks) of eight notifications for the same 20 users under a
    cap of 3: each user is admitted exactly 3 times, every other time refused; the lost races are decided again."""
    database = notification_store.notifications.database
    await database.identify_server()
    limits = FrequencyCapSettings(limits=[CapLimit(max=3, window_hours=24)], categories=["promo"])
    writers = [FrequencyCaps(database, {"demo": limits}) for _ in range(8)]
    users = [f"u:{i}" for i in range(20)]
    now = time.time()
    refused = await asyncio.gather(*(w.admit("demo", f"n{i}", users, now) for i, w in enumerate(writers)))
    admitted = Counter(user for capped in refused for user in users if user not in capped)
    assert admitted == Counter(dict.fromkeys(users, 3)), admitted
    # Again for a notification admitted before: admitted (counted once), not refused.
    again = await asyncio.gather(*(w.admit("demo", f"n{i}", users, now) for i, w in enumerate(writers)))
    assert [sorted(c) for c in again] == [sorted(c) for c in refused]
