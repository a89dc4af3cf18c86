"""`POST /v1/notifications/{id}/cancel`: the route the runbook sends on-call to (it did not exist). The campaign
cancel's mechanism for any notification: one not started is never sent, a fan-out in flight stops at its next
chunk boundary, one finished is a 409 naming its state; a key of another app, or without the `campaigns`
scope, cancels nothing."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import pytest

from pushsvc.scheduling.due import epoch_to_iso
from tests.integration.stack import API_KEY, Stack, consume, wait_until
from tests.reliability.harness import api_key_config

pytestmark = pytest.mark.integration

ALL_SCOPES = ["devices:write", "notify", "campaigns", "read"]
DEMO_KEY = "key-of-the-demo-backend-0123456789"
SHOP_KEY = "key-of-the-shop-backend-0123456789"
PRODUCER_KEY = "key-of-a-producer-only-0123456789"
IOS = "f1" * 32


def token(i: int) -> str:
    return f"c{i:063x}"


async def call(stack: Stack, method: str, path: str, body: Any = None, key: str = API_KEY) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with stack.http.request(method, stack.url(path), json=body, headers=headers) as response:
        return response.status, await response.json()


def alert(request_id: str, target: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hi", "body": "there"},
            **({"options": options} if options else {})}


async def outcome_event(stack: Stack, request_id: str) -> dict[str, Any]:
    records = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1, timeout=20)
    events = [orjson.loads(r.value) for r in records]
    return next(e for e in events if e["id"] == request_id)


async def test_a_scheduled_notification_cancelled_is_never_sent_and_its_event_is_published(stack: Stack) -> None:
    await stack.start(dispatch={"outcome_sweep_grace_seconds": 0.2})
    await stack.register(IOS, "ios")
    soon = epoch_to_iso(time.time() + 4)
    status, created = await call(stack, "POST", "/v1/notifications", alert("soon", {"tokens": [IOS]}, send_at=soon))
    assert status == 201 and created["state"] == "scheduled", created
    status, view = await call(stack, "POST", "/v1/notifications/soon/cancel?app=demo")
    assert status == 200 and view["state"] == "cancelled" and view["finished_at"], view
    event = await outcome_event(stack, "soon")  # nobody runs it: the outcome sweep announces it
    assert (event["state"], event["counts"]["delivered"]) == ("cancelled", 0)
    await asyncio.sleep(5)  # past its send_at and many claim polls
    assert stack.apns.requests == [], "a cancelled notification reached the provider"
    doc = await stack.notification("soon")
    assert doc is not None and doc["state"] == "cancelled" and doc["expire_at"] is not None
    # Cancelled is final.
    status, answer = await call(stack, "POST", "/v1/notifications/soon/cancel?app=demo")
    assert (status, answer["error"]["code"]) == (409, "invalid_state")
    assert answer["error"]["message"] == "cannot cancel a notification that is cancelled"


async def test_a_fan_out_cancelled_mid_dispatch_stops_at_its_next_chunk(stack: Stack) -> None:
    devices = 30
    stack.apns.set_default(delay=0.3)  # each chunk of 5 takes 0.3 s at the provider
    await stack.start(dispatch={"chunk_size": 5})
    await asyncio.gather(*(stack.register(token(i), "ios", tags=["promo"]) for i in range(devices)))
    status, created = await call(stack, "POST", "/v1/notifications",
                                 alert("flash", {"segment": {"tags_any": ["promo"]}}))
    assert status == 201, created
    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 5), 10)
    status, view = await call(stack, "POST", "/v1/notifications/flash/cancel?app=demo")
    assert status == 200 and view["state"] == "cancelled", view
    doc = await wait_until(lambda: _released(stack, "flash"), 10)
    await asyncio.sleep(1)  # three more chunks' time: nothing else goes out
    sent = [r.token for r in stack.apns.requests]
    assert 5 <= len(sent) < devices and len(set(sent)) == len(sent), len(sent)
    doc = await stack.notification("flash")
    assert doc is not None and doc["state"] == "cancelled"
    assert doc["counts"]["delivered"] == len(sent), "the chunk in flight is counted"
    event = await outcome_event(stack, "flash")  # announced by its runner, as a cancelled campaign is
    assert (event["state"], event["counts"]["delivered"]) == ("cancelled", len(sent))


async def _released(stack: Stack, request_id: str) -> dict | None:
    doc = await stack.notification(request_id)
    return doc if doc and doc["state"] == "cancelled" and doc["lease_owner"] is None else None


async def test_finished_or_in_flight_notifications_are_a_409_naming_the_state(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    status, _ = await call(stack, "POST", "/v1/notifications", alert("done-1", {"tokens": [IOS]}))
    assert status == 201
    await stack.wait_finished("done-1")
    status, answer = await call(stack, "POST", "/v1/notifications/done-1/cancel?app=demo")
    assert status == 409, answer
    assert answer["error"] == {"code": "invalid_state", "message": "cannot cancel a notification that is done"}

    # A few devices' notification is sent as one chunk: once it is on its way there is nothing left to stop.
    stack.apns.script(IOS, delay=1.5)
    status, _ = await call(stack, "POST", "/v1/notifications", alert("busy", {"tokens": [IOS]}))
    assert status == 201
    status, answer = await call(stack, "POST", "/v1/notifications/busy/cancel?app=demo")
    assert status == 409, answer
    assert "dispatching" in answer["error"]["message"]
    doc = await stack.wait_finished("busy")
    assert (doc["state"], doc["counts"]["delivered"]) == ("done", 1), "counted as what the provider answered"

    status, answer = await call(stack, "POST", "/v1/notifications/nope/cancel?app=demo")
    assert (status, answer["error"]["code"]) == (404, "not_found")


async def test_keys_of_another_app_or_without_the_campaigns_scope_cancel_nothing(stack: Stack) -> None:
    keys = [
        api_key_config("test", API_KEY, ALL_SCOPES, ["*"]),
        api_key_config("demo-backend", DEMO_KEY, ALL_SCOPES, ["demo"]),
        api_key_config("shop-backend", SHOP_KEY, ALL_SCOPES, ["shop"]),
        api_key_config("demo-producer", PRODUCER_KEY, ["notify", "read"], ["demo"]),
    ]
    await stack.start(more_apps=["shop"], extra={"api_keys": keys})
    later = epoch_to_iso(time.time() + 3600)
    status, _ = await call(stack, "POST", "/v1/notifications", alert("order-1", {"tokens": [IOS]}, send_at=later),
                           key=DEMO_KEY)
    assert status == 201

    # shop's key acting for shop (its only app): demo's notification is not there.
    status, answer = await call(stack, "POST", "/v1/notifications/order-1/cancel", key=SHOP_KEY)
    assert (status, answer["error"]["code"]) == (404, "not_found")
    # Naming demo: not its app.
    status, answer = await call(stack, "POST", "/v1/notifications/order-1/cancel?app=demo", key=SHOP_KEY)
    assert status == 403 and answer["error"]["field"] == "app"
    # demo's own producer key: no campaigns scope.
    status, answer = await call(stack, "POST", "/v1/notifications/order-1/cancel", key=PRODUCER_KEY)
    assert status == 403 and answer["error"]["message"] == "API key 'demo-producer' lacks scope 'campaigns'"
    doc = await stack.notification("order-1")
    assert doc is not None and doc["state"] == "scheduled", "cancelled by a key that may not"

    # demo's operator key may, without naming the app (it acts for one).
    status, view = await call(stack, "POST", "/v1/notifications/order-1/cancel", key=DEMO_KEY)
    assert status == 200 and (view["id"], view["app"], view["state"]) == ("order-1", "demo", "cancelled")


async def test_a_few_devices_notification_whose_holder_is_gone_can_be_cancelled(stack: Stack) -> None:
    """The runbook's case: a notification whose run crashed stays `dispatching` with a lease nobody renews.
    While the lease holds, a cancel is refused (the holder may be sending); once it has run out, the cancel
    wins, and nothing is sent."""
    # No claim pass takes it over meanwhile; the outcome sweep announces the cancel soon after.
    await stack.start(dispatch={"poll_interval_seconds": 3600.0, "outcome_sweep_grace_seconds": 0.2})
    await stack.register(IOS, "ios")
    now = time.time()
    held = {
        "_id": "demo:crashed", "request_id": "crashed", "app": "demo",
        "request": orjson.dumps(alert("crashed", {"tokens": [IOS]})).decode(), "source": "kafka",
        "state": "dispatching", "lane": "batch", "created_at": now - 60, "due_at": now - 60,
        "claim": "gone-replica:1", "lease_owner": "gone-replica", "lease_until": now + 2.0, "cursor": None,
        "counts": {}, "target_tokens": [IOS], "event_pending": False,
    }
    await stack.db.notifications.insert_one(held)
    status, answer = await call(stack, "POST", "/v1/notifications/crashed/cancel?app=demo")
    assert status == 409 and "a replica holds it now" in answer["error"]["message"], answer

    await asyncio.sleep(2.5)  # the lease runs out, unrenewed
    status, view = await call(stack, "POST", "/v1/notifications/crashed/cancel?app=demo")
    assert status == 200 and view["state"] == "cancelled", view
    event = await outcome_event(stack, "crashed")
    assert event["state"] == "cancelled"
    assert stack.apns.requests_for(IOS) == []


async def test_an_old_bare_id_that_spells_another_apps_key_is_not_that_apps(stack: Stack) -> None:
    """Before ids were per app, `_id` was the bare request id, and request ids may hold ':'. shop's old
    notification "demo:order-9" must not be found, cancelled or compared as demo's "order-9"."""
    keys = [
        api_key_config("test", API_KEY, ALL_SCOPES, ["*"]),
        api_key_config("demo-backend", DEMO_KEY, ALL_SCOPES, ["demo"]),
    ]
    now = time.time()
    shops = alert("demo:order-9", {"tokens": [IOS]}) | {"app": "shop"}
    await stack.db.notifications.insert_one({
        "_id": "demo:order-9", "app": "shop", "request": orjson.dumps(shops).decode(), "source": "kafka",
        "state": "scheduled", "lane": "batch", "created_at": now, "due_at": now + 3600, "lease_owner": None,
        "lease_until": 0.0, "cursor": None, "counts": {},
    })
    await stack.start(more_apps=["shop"], extra={"api_keys": keys})
    status, answer = await call(stack, "POST", "/v1/notifications/order-9/cancel", key=DEMO_KEY)
    assert (status, answer["error"]["code"]) == (404, "not_found"), answer
    status, answer = await call(stack, "GET", "/v1/notifications/order-9", key=DEMO_KEY)
    assert status == 404, answer
    doc = await stack.db.notifications.find_one({"_id": "demo:order-9"})
    assert doc is not None and doc["state"] == "scheduled", "shop's notification was changed through demo's key"


async def test_cancels_racing_the_claim_at_the_due_time_each_win_or_lose_whole(stack: Stack) -> None:
    """Cancels sent around the moment the scheduler claims scheduled notifications (it wakes at their due
    time): the cancel and the claim are each one conditional write on the document, so each notification is
    either cancelled and never sent (200), or claimed and sent once (409 naming its state) — never a 200 for a
    push that then went out, nor a push lost by both."""
    await stack.start(dispatch={"outcome_sweep_grace_seconds": 0.2})
    count = 30
    for i in range(count):
        await stack.register(token(i), "ios")
    due = time.time() + 3.0
    for i in range(count):
        status, _ = await call(stack, "POST", "/v1/notifications",
                               alert(f"race-{i}", {"tokens": [token(i)]}, send_at=epoch_to_iso(due)))
        assert status == 201
    rng = random.Random(20261204)
    # From well before the due time (the cancel wins) to well after (the claim has won), densest just after
    # it, where the claim is written (10-30 ms after the due time on this box).
    offsets = sorted(rng.triangular(-0.5, 0.6, 0.02) for _ in range(count))

    async def cancel_at(i: int, offset: float) -> tuple[int, Any]:
        await asyncio.sleep(max(0.0, due + offset - time.time()))
        return await call(stack, "POST", f"/v1/notifications/race-{i}/cancel?app=demo")

    answers = await asyncio.gather(*(cancel_at(i, offset) for i, offset in enumerate(offsets)))
    finals = [await stack.wait_finished(f"race-{i}") for i in range(count)]
    await asyncio.sleep(1.0)  # anything still on its way to the provider arrives
    cancelled = 0
    for i, ((status, answer), final) in enumerate(zip(answers, finals, strict=True)):
        sent = len(stack.apns.requests_for(token(i)))
        if status == 200:
            cancelled += 1
            assert answer["state"] == "cancelled" and final["state"] == "cancelled", (i, answer, final["state"])
            assert sent == 0 and final["counts"].get("delivered", 0) == 0, f"race-{i} cancelled and sent"
        else:
            assert status == 409 and answer["error"]["code"] == "invalid_state", (i, status, answer)
            assert final["state"] == "done" and sent == 1, (i, answer, final["state"], sent)
            assert final["counts"]["delivered"] == 1
    assert 0 < cancelled < count, f"{cancelled} of {count} cancelled: the cancels did not straddle the claim"
