"""Personal data does not live forever: notifications expire through a TTL index, and a GDPR erasure removes
the user and their device tokens from stored requests (finished or not) as well as their devices."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson

from tests.integration.stack import Stack, auth_headers, wait_until

ALICE_IOS = "a1" * 32
ALICE_ANDROID = "fcm:alice-" + "x" * 40
BOB_IOS = "b2" * 32


def at(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


def alert(request_id: str, target: dict, send_at: str | None = None) -> dict:
    request: dict = {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hi", "body": "there"}}
    if send_at:
        request["options"] = {"send_at": send_at}
    return request


def as_datetime(value: object) -> datetime:
    # A BSON date reads back as a datetime from MongoDB; nx-27017 hands it back as ISO text.
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def test_finished_notifications_expire_and_unfinished_ones_stay(stack: Stack) -> None:
    """Retention counts from the end: a finished notification is deleted by the TTL index once its retention
    has passed; one still to be sent (a paused or slow campaign) is never deleted under its runner."""
    retention_days = 2.0 / 86400  # two seconds
    await stack.start(extra={"retention": {"notification_days": retention_days}})
    await stack.register(BOB_IOS, "ios", user_id="bob")
    await stack.publish(alert("now", {"users": ["bob"]}), alert("later", {"users": ["bob"]}, send_at=at(3600)))
    done = await stack.wait_finished("now")
    later = await stack.notification("later")
    assert later is not None and later["state"] == "scheduled" and later.get("expire_at") is None
    finished_at = datetime.fromtimestamp(done["finished_at"], UTC)
    assert abs(as_datetime(done["expire_at"]) - (finished_at + timedelta(seconds=2))) < timedelta(seconds=1)
    # By key: nx-27017 names indexes after their fields, whatever name was asked for.
    indexes = [i for i in (await stack.db.notifications.index_information()).values() if i["key"] == [("expire_at", 1)]]
    assert [i.get("expireAfterSeconds") for i in indexes] == [0]

    # The server deletes it (a real MongoDB's TTL monitor runs once a minute; nx-27017 purges on reads).
    async def deleted() -> bool:
        return await stack.notification("now") is None

    await wait_until(deleted, timeout=15, interval=0.5)
    assert await stack.notification("later") is not None


async def test_erasing_a_user_scrubs_stored_requests_and_pending_ones_skip_them(stack: Stack) -> None:
    await stack.start()
    await stack.register(ALICE_IOS, "ios", user_id="alice")
    await stack.register(ALICE_ANDROID, "android", user_id="alice")
    await stack.register(BOB_IOS, "ios", user_id="bob")
    await stack.publish(alert("finished", {"users": ["alice"]}))
    await stack.wait_finished("finished")
    # Two requests still waiting to be sent when the erasure comes in.
    soon = at(8)
    await stack.publish(
        alert("by-user", {"users": ["alice", "bob"]}, send_at=soon),
        alert("by-token", {"tokens": [BOB_IOS, ALICE_IOS]}, send_at=soon),
    )

    async def recorded() -> bool:
        return all([await stack.notification("by-user"), await stack.notification("by-token")])

    await wait_until(recorded, timeout=8)
    async with stack.http.delete(stack.url("/v1/users/alice?app=demo"), headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
        erased = await response.json()
    assert erased == {"user_id": "alice", "deleted_devices": 2, "scrubbed_notifications": 3}

    for notification_id in ("finished", "by-user", "by-token"):
        doc = await stack.notification(notification_id)
        assert doc is not None
        text = orjson.dumps({k: v for k, v in doc.items() if k != "_id"}, default=str).decode()
        assert "alice" not in text and ALICE_IOS not in text and ALICE_ANDROID not in text, notification_id
        # Nor anything derived from them: the idempotency hash of the request as sent is dropped.
        assert "request_hash" not in doc, notification_id

    by_user = await stack.wait_finished("by-user", timeout=30)
    by_token = await stack.wait_finished("by-token", timeout=30)
    assert by_user["counts"]["delivered"] == 1 and by_user["counts"]["targeted"] == 1
    # The erased token's place holds a placeholder that matches no device.
    assert by_token["counts"]["delivered"] == 1 and by_token["counts"]["unknown_token"] == 1
    await asyncio.sleep(0.3)
    assert len(stack.apns.requests_for(ALICE_IOS)) == 1, "only the push sent before the erasure"
    assert len(stack.apns.requests_for(BOB_IOS)) == 2
