"""Direct dispatch: a due-now transactional request is recorded already held by the replica that took it in
and sent at once; the claim loop sleeps until woken, until a due time it knows of, or its safety poll."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from pushsvc.config import DispatchSettings
from pushsvc.service import PushService
from pushsvc.store.notifications import LANE_BATCH
from pushsvc.store.records import NotificationRecord
from tests.integration.stack import Stack, auth_headers, wait_until

pytestmark = pytest.mark.integration

# The claim loop's safety poll, far beyond any wait below: whatever is sent in time did not wait for it.
NO_POLL = {"poll_interval_seconds": 60.0}


def alert(request_id: str, user: str, **options: object) -> dict:
    body = {"id": request_id, "app": "demo", "target": {"users": [user]}, "message": {"title": "t", "body": "b"}}
    return {**body, "options": options} if options else body


def token(n: int) -> str:
    return f"{n:064x}"


def count_claims(service: PushService) -> list[tuple[str, int]]:
    """Every claim_due the service's scheduler makes: (lane, notifications won). Wraps the real method."""
    calls: list[tuple[str, int]] = []
    real = service.claims.claim_due

    async def claim_due(*args: object, **kwargs: object) -> tuple[str, list[NotificationRecord]]:
        token_, records = await real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append((str(args[5] if len(args) > 5 else kwargs["lane"]), len(records)))
        return token_, records

    service.claims.claim_due = claim_due  # type: ignore[method-assign]
    return calls


async def test_a_due_now_request_is_sent_by_the_replica_that_recorded_it_without_a_claim(stack: Stack) -> None:
    service = await stack.start(dispatch=NO_POLL)
    claims = count_claims(service)
    for n in range(4):
        await stack.register(token(n), "ios", user_id=f"u{n}")
    started = time.monotonic()
    await stack.publish(alert("k0", "u0"), alert("k1", "u1"))
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("h2", "u2"), headers=auth_headers()) as r:
        assert r.status == 201, await r.text()
        view = await r.json()
    # The API answers with the record as written: already held by this replica.
    assert view["state"] == "dispatching"
    for rid in ("k0", "k1", "h2"):
        doc = await stack.wait_finished(rid, timeout=10)
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
        # The lease that finished it was this replica's, and no claim of the batch lane ever took it.
        assert doc["released_claim"].startswith(f"{service.owner}/"), doc
    assert time.monotonic() - started < 5
    assert [won for lane, won in claims if lane == LANE_BATCH and won] == [], claims
    # Nor did a finished batch wake the claim loop for nothing (a pass is a query per lane): at most the
    # pass at start (batch, fanout and range lanes), if it came after the counting began.
    assert len(claims) <= 3, claims
    assert Counter(r.token for r in stack.apns.requests) == Counter({token(0): 1, token(1): 1, token(2): 1})


async def test_requests_beyond_the_batch_lane_room_wait_unclaimed_and_each_is_sent_once(stack: Stack) -> None:
    # Room for 2 at a time; the provider answers after 0.5 s, so most of the 8 find the lane full.
    service = await stack.start(dispatch={**NO_POLL, "max_batched_notifications": 2})
    claims = count_claims(service)
    for n in range(8):
        await stack.register(token(n), "ios", user_id=f"u{n}")
    stack.apns.set_default(delay=0.5)
    ids = [f"r{n}" for n in range(8)]
    await stack.publish(*(alert(rid, f"u{n}") for n, rid in enumerate(ids)))
    for rid in ids:
        doc = await stack.wait_finished(rid, timeout=20)
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
    # Those recorded while the lane was full were claimed as room came free (woken, not polled).
    assert sum(won for lane, won in claims if lane == LANE_BATCH) >= 1, claims
    assert Counter(r.token for r in stack.apns.requests) == Counter({token(n): 1 for n in range(8)})


async def test_a_scheduled_request_is_claimed_at_its_due_time_not_at_the_safety_poll(stack: Stack) -> None:
    service = await stack.start(dispatch=NO_POLL)
    await stack.register(token(1), "ios", user_id="u1")
    send_at = service.server_clock.now() + 2.0
    at = datetime.fromtimestamp(send_at, UTC).isoformat()
    await stack.publish(alert("later", "u1", send_at=at))
    doc = await stack.wait_finished("later", timeout=10)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
    (sent,) = stack.apns.requests
    # Not early; and woken at its due time, where the safety poll would have come ~60 s after start.
    assert sent.time >= send_at - 0.05
    assert sent.time < send_at + 3.0, sent.time - send_at


async def test_an_idle_replica_claims_only_at_its_safety_poll(stack: Stack) -> None:
    # The default setting (the other tests here poll fast to keep them short).
    service = await stack.start(dispatch={"poll_interval_seconds": DispatchSettings().poll_interval_seconds})
    await asyncio.sleep(0.5)  # the first pass at start is out of the window
    claims = count_claims(service)
    await asyncio.sleep(5.5)
    # One or two passes in 5.5 s (a claim per lane each); the former 0.2 s default made ~55.
    assert 2 <= len(claims) <= 4, claims


async def test_a_request_recorded_while_the_replica_drains_is_handed_back_not_kept(stack: Stack) -> None:
    """A replica that begins to drain takes nothing more: a request it records is left for the others."""
    first = await stack.start(dispatch=NO_POLL)
    await stack.register(token(5), "ios", user_id="u5")
    await first.scheduler.drain(0.1)  # draining: reserves no room any more
    async with stack.http.post(
        stack.url("/v1/notifications", first), json=alert("during-drain", "u5"), headers=auth_headers()
    ) as r:
        assert r.status == 201, await r.text()
    doc = await stack.notification("during-drain")
    assert doc is not None and doc["claim"] is None and doc["state"] == "accepted", doc
    other = await stack.start()
    done = await stack.wait_finished("during-drain", timeout=10)
    assert done["released_claim"].startswith(f"{other.owner}/"), done

    async def sent_once() -> bool:
        return [r.token for r in stack.apns.requests] == [token(5)]

    await wait_until(sent_once, timeout=5)


async def test_a_push_posted_over_http_outlives_the_api_deadline_and_is_sent_once(stack: Stack) -> None:
    """The API bounds its own MongoDB work (http.store_timeout_ms); the batch a POST starts must not inherit
    that deadline: its finish, renewals and hand-back would all fail once it passed, the lease would lapse and
    another pass would send the push again."""
    await stack.start(dispatch={"lease_seconds": 4.0, "send_timeout_seconds": 3.0},
                      extra={"http": {"host": "127.0.0.1", "port": 0, "store_timeout_ms": 300}})
    await stack.register(token(7), "ios", user_id="u7")
    stack.apns.set_default(delay=1.5)  # answered long after the API's 0.3 s deadline
    async with stack.http.post(stack.url("/v1/notifications"), json=alert("slow", "u7"), headers=auth_headers()) as r:
        assert r.status == 201, await r.text()
    doc = await stack.wait_finished("slow", timeout=10)
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
    await asyncio.sleep(5.0)  # past the lease: a lapsed one would have been claimed and sent again by now
    assert [r.token for r in stack.apns.requests] == [token(7)]
