"""Request ids are idempotency keys that tell the truth: a repeat with the same body is answered with the
original, a repeat with a different body is a 409 (HTTP) or a `conflict` dead letter (Kafka) naming the first
field that differs, and the request recorded first is kept unchanged and sent once.

Before: a repeated id with another body silently answered 200 with the original (or vanished on Kafka).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from pushsvc.api.asyncapi import CONFLICT_EXAMPLE, json_schemas
from pushsvc.scheduling.due import epoch_to_iso
from pushsvc.store.notifications import notification_key
from tests.integration.stack import Stack, auth_headers, wait_until
from tests.integration.test_ingest_faults import recorded, topic_messages, wait_committed
from tests.reliability.harness import metric_sum

pytestmark = pytest.mark.integration

IOS = "c7" * 32
LA_TOKEN = "d8" * 32


def alert(request_id: str, title: str = "Your order shipped", **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "app": "demo", "target": {"tokens": [IOS]},
            "message": {"title": title, "body": "Arriving Thursday", "data": {"order": 42}}, **extra}


async def post(stack: Stack, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {**auth_headers(), "Content-Type": "application/json"}
    async with stack.http.post(stack.url(path), data=data, headers=headers) as response:
        return response.status, await response.json()


async def metrics_text(stack: Stack) -> str:
    async with stack.http.get(stack.url("/metrics")) as response:
        return await response.text()


async def test_http_repeat_answers_the_original_and_another_body_is_a_409_naming_the_field(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    status, created = await post(stack, "/v1/notifications", alert("order-42"))
    assert status == 201, created
    await stack.wait_finished("order-42")

    # The same request again, with its keys in another order and other whitespace: the original, 200.
    same = b'{ "message": {"data": {"order": 42}, "body": "Arriving Thursday", "title": "Your order shipped"},\n' \
           b'  "target": {"tokens": ["' + IOS.encode() + b'"]}, "app": "demo", "id": "order-42" }'
    status, again = await post(stack, "/v1/notifications", same)
    assert status == 200, again
    assert (again["id"], again["state"], again["counts"]["delivered"]) == ("order-42", "done", 1)

    # A different title under the same id: 409 naming the field, in the one error shape.
    status, answer = await post(stack, "/v1/notifications", alert("order-42", title="Your order is late"))
    assert status == 409, answer
    assert answer["error"]["code"] == "conflict" and answer["error"]["field"] == "message.title"
    assert "order-42" in answer["error"]["message"]
    # Other fields are named the same way; a JSON type change is a change (FCM would get "42.0").
    changed = alert("order-42")
    changed["message"]["data"] = {"order": 42.0}
    status, answer = await post(stack, "/v1/notifications", changed)
    assert (status, answer["error"]["field"]) == (409, "message.data.order")
    status, answer = await post(stack, "/v1/notifications", alert("order-42", options={"ttl_seconds": 60}))
    assert (status, answer["error"]["field"]) == (409, "options")

    # The recorded notification is unchanged and was sent once.
    doc = await stack.notification("order-42")
    assert doc is not None and orjson.loads(doc["request"])["message"]["title"] == "Your order shipped"
    assert doc["request_hash"].startswith("v1:")
    assert len(stack.apns.requests_for(IOS)) == 1
    # The same id in another app is another notification, not a conflict.
    assert await stack.notification("order-42", app="shop") is None


async def test_documents_recorded_before_hashes_are_compared_by_their_stored_request(stack: Stack) -> None:
    """A notification recorded by the previous version has no request_hash: an identical repeat is still a
    repeat (200), a different one a 409; a Live Activity's stamped timestamp is not the caller's difference."""
    await stack.start()
    later = epoch_to_iso(time.time() + 3600)  # stays scheduled: nothing is sent
    activity = {"id": "eta-1", "app": "demo", "target": {"tokens": [LA_TOKEN]},
                "message": {"live_activity": {"event": "update", "content_state": {"eta_minutes": 12}}},
                "options": {"push_type": "liveactivity", "send_at": later}}
    for body in (alert("old-1", options={"send_at": later}), activity):
        status, created = await post(stack, "/v1/notifications", body)
        assert status == 201, created
        status, _ = await post(stack, "/v1/notifications", body)
        assert status == 200
        # What the previous version stored: no hash.
        await stack.db.notifications.update_one({"_id": notification_key("demo", body["id"])},
                                                {"$unset": {"request_hash": ""}})
        doc = await stack.notification(body["id"])
        assert doc is not None and "request_hash" not in doc
        status, again = await post(stack, "/v1/notifications", body)
        assert status == 200, again
    stored = orjson.loads((await stack.notification("eta-1"))["request"])  # type: ignore[index]
    assert isinstance(stored["message"]["live_activity"]["timestamp"], int), "stamped at intake, as before"

    status, answer = await post(stack, "/v1/notifications", alert("old-1", title="Other", options={"send_at": later}))
    assert (status, answer["error"]["field"]) == (409, "message.title")
    activity["message"]["live_activity"]["content_state"] = {"eta_minutes": 5}
    status, answer = await post(stack, "/v1/notifications", activity)
    assert (status, answer["error"]["field"]) == (409, "message.live_activity.content_state.eta_minutes")


async def test_kafka_repeat_is_absorbed_and_another_body_is_dead_lettered_as_a_conflict(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    before = metric_sum(await metrics_text(stack), "pushsvc_dlq_messages_total", reason="conflict")
    await stack.publish(alert("k-1"), key=b"k")
    await stack.wait_finished("k-1")
    # Offsets 1-3: a redelivery of k-1, k-1 with another title, k-2 recorded; in one batch, k-2 and a copy of
    # it with another body (offsets 4, 5): the first recorded wins there too.
    await stack.publish(alert("k-1"), alert("k-1", title="Changed"), alert("k-2"), alert("k-2", title="Other"),
                        key=b"k")
    await wait_committed(stack, 5)
    await stack.wait_finished("k-2")
    assert await recorded(stack, "k-1", "k-2")

    letters = [(r, orjson.loads(r.value)) for r in await topic_messages(stack, stack.kafka["dlq_topic"])]
    assert [(x["reason"], x["field"], x["source"]["offset"]) for _, x in letters] == [
        ("conflict", "message.title", 2), ("conflict", "message.title", 4)
    ]
    record, letter = letters[0]
    assert orjson.loads(letter["value"]) == alert("k-1", title="Changed"), "the new record is kept whole"
    assert "k-1" in letter["error"] and letter["source"]["key"] == "k"
    assert dict(record.headers)["pushsvc-dlq-reason"] == b"conflict"
    # The dead letter and the contract's example of one both meet the published schema.
    schema = Draft202012Validator(json_schemas()["dead-letter.schema.json"])
    schema.validate(letter)
    schema.validate(CONFLICT_EXAMPLE)

    # The originals stand, each sent once; the metric of rejected requests counts the two.
    for request_id in ("k-1", "k-2"):
        doc = await stack.notification(request_id)
        assert doc is not None and orjson.loads(doc["request"])["message"]["title"] == "Your order shipped"
        assert doc["counts"]["delivered"] == 1
    await wait_until(lambda: _settled(stack), 5)
    assert len(stack.apns.requests_for(IOS)) == 2
    after = metric_sum(await metrics_text(stack), "pushsvc_dlq_messages_total", reason="conflict")
    assert after - before == 2


async def _settled(stack: Stack) -> bool:
    return len(stack.apns.requests_for(IOS)) >= 2


def campaign(campaign_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": campaign_id, "name": "Spring sale", "app": "demo", "audience": {"segment": {"tags_any": ["promo"]}},
            "message": {"title": "Sale", "body": "Everything must go"},
            "schedule": {"at": "2099-03-01T09:00:00Z"}, **extra}


async def test_campaign_id_repeated_with_another_body_is_a_409_naming_the_field(stack: Stack) -> None:
    await stack.start()
    status, created = await post(stack, "/v1/campaigns", campaign("spring"))
    assert status == 201, created
    # The same campaign again, defaults spelled out: 200 with the campaign as created.
    status, again = await post(stack, "/v1/campaigns",
                               campaign("spring", schedule={"at": "2099-03-01T09:00:00Z", "local_time": False},
                                        options={}))
    assert status == 200 and again["id"] == "spring" and again["status"] == "scheduled", again
    for changed, field in [
        (campaign("spring", message={"title": "Soldes", "body": "Everything must go"}), "message.title"),
        (campaign("spring", schedule={"at": "2099-03-02T09:00:00Z"}), "schedule.at"),
        (campaign("spring", throttle_per_second=10), "throttle_per_second"),
        (campaign("spring", options={"dry_run": True}), "options.dry_run"),
    ]:
        status, answer = await post(stack, "/v1/campaigns", changed)
        assert status == 409, (field, answer)
        assert (answer["error"]["code"], answer["error"]["field"]) == ("conflict", field)
    doc = await stack.notification("campaign:spring")
    assert doc is not None and orjson.loads(doc["request"])["message"]["title"] == "Sale"

    # A campaign recorded before hashes existed: compared by what is stored.
    await stack.db.notifications.update_one({"_id": doc["_id"]}, {"$unset": {"request_hash": ""}})
    status, _ = await post(stack, "/v1/campaigns", campaign("spring"))
    assert status == 200
    status, answer = await post(stack, "/v1/campaigns", campaign("spring", name="Autumn sale"))
    assert (status, answer["error"]["field"]) == (409, "name")


async def test_a_campaign_id_held_by_a_notification_that_is_not_a_campaign_is_a_409_naming_id(stack: Stack) -> None:
    """Producers cannot use the `campaign:` prefix now, but a notification recorded before that rule may hold a
    campaign's key: creating that campaign is a 409 naming `id`, and the notification stands as it was."""
    await stack.start()
    later = {"send_at": epoch_to_iso(time.time() + 3600)}
    assert (await post(stack, "/v1/notifications", alert("plain", options=later)))[0] == 201
    plain = await stack.notification("plain")
    assert plain is not None
    held = {**plain, "_id": notification_key("demo", "campaign:held"), "request_id": "campaign:held"}
    await stack.db.notifications.insert_one(held)
    status, answer = await post(stack, "/v1/campaigns", campaign("held"))
    assert status == 409, answer
    assert (answer["error"]["code"], answer["error"]["field"]) == ("conflict", "id")
    doc = await stack.notification("campaign:held")
    assert doc is not None and "kind" not in doc and doc["request_hash"] == plain["request_hash"]
    assert await stack.db.notifications.count_documents({"kind": "campaign"}) == 0


async def test_repeats_racing_the_first_insert_are_answered_by_what_won(stack: Stack) -> None:
    """Eight posts of one id at once, half with one title and half with another: one insert wins, the posts
    with its body answer the original (201 for the winner, 200 for the others), the others a 409 naming
    `message.title`, and the device gets exactly one push, with the winner's title."""
    await stack.start()
    await stack.register(IOS, "ios")
    bodies = [alert("race-1", title="First" if i % 2 else "Second") for i in range(8)]
    answers = await asyncio.gather(*(post(stack, "/v1/notifications", body) for body in bodies))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 1, answers
    won = bodies[statuses.index(201)]["message"]["title"]
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if body["message"]["title"] == won:
            assert status in (200, 201) and answer["id"] == "race-1", answer
        else:
            assert status == 409 and answer["error"]["field"] == "message.title", answer
    doc = await stack.wait_finished("race-1")
    assert orjson.loads(doc["request"])["message"]["title"] == won
    assert doc["counts"]["delivered"] == 1
    await asyncio.sleep(0.3)
    sent = stack.apns.requests_for(IOS)
    assert len(sent) == 1 and sent[0].body["aps"]["alert"]["title"] == won


async def test_campaign_creates_racing_are_one_campaign_and_conflicts_are_counted(stack: Stack) -> None:
    """Eight creates of one campaign id at once, two names: campaigns are recorded through the one intake, so
    one insert wins, its body's other posts answer 200 with it, the other name's a 409 naming `name`; one
    campaign document exists, and every 409 is counted as a conflict of source `campaign`."""
    await stack.start()

    def ingested(text: str) -> dict[str, float]:  # the service's metrics live as long as the test process
        return {outcome: metric_sum(text, "pushsvc_requests_ingested_total", source="campaign", outcome=outcome)
                for outcome in ("accepted", "duplicate", "conflict")}

    before = ingested(await metrics_text(stack))
    bodies = [campaign("autumn", name="Autumn" if i % 2 else "Fall") for i in range(8)]
    answers = await asyncio.gather(*(post(stack, "/v1/campaigns", body) for body in bodies))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 1, answers
    won = bodies[statuses.index(201)]["name"]
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if body["name"] == won:
            assert status in (200, 201) and (answer["id"], answer["name"]) == ("autumn", won), answer
        else:
            assert status == 409 and answer["error"]["field"] == "name", answer
    assert await stack.db.notifications.count_documents({"kind": "campaign"}) == 1
    after = ingested(await metrics_text(stack))
    counted = {outcome: after[outcome] - before[outcome] for outcome in after}
    assert counted == {"accepted": 1, "duplicate": 3, "conflict": statuses.count(409)} and statuses.count(409) == 4


async def test_http_conflicts_are_counted(stack: Stack) -> None:
    await stack.start()
    later = {"send_at": epoch_to_iso(time.time() + 3600)}
    assert (await post(stack, "/v1/notifications", alert("counted", options=later)))[0] == 201
    before = metric_sum(await metrics_text(stack), "pushsvc_requests_ingested_total", source="api", outcome="conflict")
    status, _ = await post(stack, "/v1/notifications", alert("counted", title="Another", options=later))
    assert status == 409
    after = metric_sum(await metrics_text(stack), "pushsvc_requests_ingested_total", source="api", outcome="conflict")
    assert after - before == 1
