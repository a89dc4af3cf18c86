"""Documents already in MongoDB: those of the version that keyed notifications by the bare request id, and
stored requests that no longer parse. Neither may be lost, sent twice, or hold up other work."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.stack import Stack, auth_headers
from tests.integration.stores import document

IOS = "c4" * 32
OTHER = "c5" * 32


def alert(request_id: str, target: dict) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hi", "body": "there"}}


async def test_notifications_recorded_before_ids_were_per_app_are_found_absorbed_and_erasable(stack: Stack) -> None:
    now = time.time()
    # As the previous version wrote them: _id is the bare request id, none of the per-app fields.
    await stack.db.notifications.insert_many([
        {"_id": "old-done", "app": "demo", "request": orjson.dumps(alert("old-done", {"users": ["zoe"]})).decode(),
         "source": "kafka", "state": "done", "lane": "batch", "created_at": now - 60, "due_at": now - 60,
         "finished_at": now - 50, "lease_owner": None, "lease_until": 0.0, "cursor": None,
         "counts": {"targeted": 1, "delivered": 1}},
        {"_id": "old-uncommitted", "app": "demo",
         "request": orjson.dumps(alert("old-uncommitted", {"tokens": [IOS]})).decode(), "source": "kafka",
         "state": "done", "lane": "batch", "created_at": now - 5, "due_at": now - 5, "finished_at": now - 4,
         "lease_owner": None, "lease_until": 0.0, "cursor": None, "counts": {"targeted": 1, "delivered": 1}},
    ])
    await stack.start()
    await stack.register(IOS, "ios", user_id="zoe")
    old = await stack.db.notifications.find_one({"_id": "old-done"})
    assert old is not None and old["request_id"] == "old-done" and old["target_users"] == ["zoe"]
    assert old.get("expire_at") is not None, "a finished old notification expires like a new one"

    async with stack.http.get(stack.url("/v1/notifications/old-done?app=demo"), headers=auth_headers()) as response:
        assert response.status == 200 and (await response.json())["id"] == "old-done"
    # A request an old replica recorded but did not commit, redelivered to this version: a duplicate.
    await stack.publish(alert("old-uncommitted", {"tokens": [IOS]}), alert("marker", {"tokens": [IOS]}))
    await stack.wait_finished("marker")
    assert await stack.notification("old-uncommitted") is None, "recorded again under the new key"
    assert len(stack.apns.requests_for(IOS)) == 1, "sent again"

    async with stack.http.delete(stack.url("/v1/users/zoe?app=demo"), headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
    old = await stack.db.notifications.find_one({"_id": "old-done"})
    assert old is not None and "zoe" not in old["request"]


async def test_a_stored_request_that_no_longer_parses_fails_alone(stack: Stack) -> None:
    """One unreadable stored request (an incompatible upgrade, or a parser bug) is finished as failed with the
    reason; the notifications claimed with it are sent."""
    now = time.time()
    broken = alert("broken", {"tokens": [IOS]})
    broken["options"] = {"send_at": "not a time"}
    await stack.db.notifications.insert_one(
        {"_id": "demo:broken", "request_id": "broken", "app": "demo", "request": orjson.dumps(broken).decode(),
         "source": "kafka", "state": "accepted", "lane": "batch", "created_at": now, "due_at": now - 1,
         "lease_owner": None, "lease_until": 0.0, "claim": None, "progress_seq": 0, "cursor": None,
         "counts": {"targeted": 0}}
    )
    await stack.start()
    await stack.register(OTHER, "ios")
    await stack.publish(alert("fine", {"tokens": [OTHER]}))
    fine = await stack.wait_finished("fine")
    failed = await stack.wait_finished("broken")
    assert fine["counts"]["delivered"] == 1
    assert failed["state"] == "failed" and "stored request unreadable" in failed["error"], failed
    assert "send_at" in failed["error"]


@pytest.mark.parametrize("field, odd", [("chunk_done", 7), ("progress_seq", "three"), ("wave_zones", 5)])
async def test_a_document_field_of_another_shape_fails_that_notification_alone(
    stack: Stack, field: str, odd: object
) -> None:
    """A field of a shape this version does not write (a hand fix, a migration, another version's writer during
    a rolling upgrade) fails that one notification saying so; the notification claimed with it in the same pass
    is sent. (Found by review: building typed records inside the claim failed the whole claim, at every lease
    expiry, and no other fan-out was ever sent.)"""
    now = time.time()
    segment = {"segment": {"tags_any": ["iso"]}}
    await stack.db.notifications.insert_many([
        {**document(alert("odd", segment), "kafka", now - 10, now - 10), "_id": "demo:odd", field: odd},
        {**document(alert("good", segment), "kafka", now - 10, now - 10), "_id": "demo:good"},
    ])
    await stack.start()
    await stack.register(IOS, "ios", tags=["iso"])
    good = await stack.wait_finished("good", timeout=15.0)
    assert good["state"] == "done" and good["counts"]["delivered"] == 1
    failed = await stack.wait_finished("odd", timeout=15.0)
    assert failed["state"] == "failed" and failed["error"].startswith("stored document unreadable: "), failed
    assert len(stack.apns.requests_for(IOS)) == 1


async def test_a_first_chunk_handed_back_by_the_previous_version_resumes_in_its_order(stack: Stack) -> None:
    """The previous version read audiences in `_id` order and saved a first chunk cut short as no cursor plus
    the answered devices (`chunk_done`). Resumed now (token order elsewhere), that chunk must be the same
    one: every device is sent once, the answered ones not again. Tokens are registered so that token order
    and `_id` order differ."""
    tokens = [f"{n:02x}".ljust(64, "a") for n in range(30)]
    tokens.reverse()  # registered in descending token order: `_id` order is the reverse of token order
    await stack.start(dispatch={"chunk_size": 10})
    for token in tokens:
        await stack.register(token, "ios", tags=["legacy-resume"])
    devices = [d async for d in stack.db.devices.find({"tags": {"$in": ["legacy-resume"]}}).sort("_id", 1)]
    assert len(devices) == 30
    first_by_id = devices[:10]  # the previous version's first chunk (chunk_size 10)
    answered = first_by_id[:4]
    now = time.time()
    request = alert("legacy-resume", {"segment": {"tags_any": ["legacy-resume"]}})
    await stack.db.notifications.insert_one(
        {"_id": "demo:legacy-resume", "request_id": "legacy-resume", "app": "demo",
         "request": orjson.dumps(request).decode(), "source": "kafka", "state": "dispatching", "lane": "fanout",
         "created_at": now, "due_at": now - 1, "lease_owner": None, "lease_until": 0.0, "claim": None,
         "progress_seq": 0, "cursor": None, "chunk_done": [str(d["_id"]) for d in answered],
         "counts": {"targeted": 4, "delivered": 4}}
    )  # found by the next claim pass
    doc = await stack.wait_finished("legacy-resume")
    sent = [r.token for r in stack.apns.requests]
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 30 and doc["counts"]["targeted"] == 30, doc
    assert sorted(sent) == sorted(d["token"] for d in devices[4:])  # each once, the answered four not again
