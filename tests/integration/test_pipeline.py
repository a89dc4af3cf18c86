"""End to end: requests published to the broker reach the APNs and FCM peers exactly as expected."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pushsvc.dev.servers import nx27017
from pushsvc.store.counts import COUNT_KEYS
from tests.integration.stack import APNS_TOPIC, Stack, auth_headers, consume, wait_until

IOS = "a1" * 32
IOS_2 = "b2" * 32
ANDROID = "fcm:" + "x" * 60
ANDROID_2 = "fcm:" + "y" * 60


def alert(request_id: str, target: dict, **extra: object) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hello", "body": "World"}, **extra}


async def test_tokens_target_sends_exact_apns_and_fcm_requests(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", locale="fr-FR", timezone="Europe/Paris")
    await stack.register(ANDROID, "android", locale="de-DE")
    request = {
        "id": "order-42-shipped",
        "app": "demo",
        "target": {"tokens": [IOS, ANDROID]},
        "message": {
            "title": "Hello",
            "body": "Your order shipped",
            "data": {"order": 42, "vip": True, "kind": "shipping"},
            "badge": 3,
            "sound": "default",
            "category": "orders",
            "thread_id": "order-42",
            "localized": {"fr": {"title": "Bonjour"}, "de": {"body": "Ihre Bestellung ist unterwegs"}},
        },
        "options": {"priority": "high", "ttl_seconds": 3600, "collapse_key": "order-42"},
    }
    await stack.publish(request)
    doc = await stack.wait_finished("order-42-shipped")
    assert doc["state"] == "done"
    assert doc["counts"]["targeted"] == 2
    assert doc["counts"]["delivered"] == 2
    expiration = int(doc["due_at"] + 3600)

    (apns,) = stack.apns.requests_for(IOS)
    assert apns.headers[":method"] == "POST"
    assert apns.headers[":path"] == f"/3/device/{IOS}"
    assert apns.headers["apns-topic"] == APNS_TOPIC
    assert apns.headers["apns-push-type"] == "alert"
    assert apns.headers["apns-priority"] == "10"
    assert apns.headers["apns-collapse-id"] == "order-42"
    assert int(apns.headers["apns-expiration"]) == expiration
    assert apns.headers["authorization"].startswith("bearer ")
    assert apns.body == {
        "aps": {
            "alert": {"title": "Bonjour", "body": "Your order shipped"},
            "badge": 3,
            "sound": "default",
            "category": "orders",
            "thread-id": "order-42",
        },
        "order": 42,
        "vip": True,
        "kind": "shipping",
    }

    (fcm,) = stack.fcm.requests_for(ANDROID)
    assert fcm.project == "demo-project"
    scheme, _, access_token = fcm.headers["authorization"].partition(" ")
    assert scheme == "Bearer" and access_token in stack.fcm.issued_tokens
    message = fcm.message
    ttl = message["android"].pop("ttl")
    assert ttl in ("3600s", "3599s")  # remaining lifetime at send time, whole seconds
    assert message == {
        "token": ANDROID,
        "notification": {"title": "Hello", "body": "Ihre Bestellung ist unterwegs"},
        "data": {"order": "42", "vip": "true", "kind": "shipping"},
        "android": {"priority": "high", "collapse_key": "order-42"},
    }


async def test_background_push_headers(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    await stack.publish(
        {
            "id": "bg-1",
            "app": "demo",
            "target": {"tokens": [IOS]},
            "message": {"data": {"sync": "inbox"}},
            "options": {"push_type": "background", "ttl_seconds": 0},
        }
    )
    await stack.wait_finished("bg-1")
    (apns,) = stack.apns.requests_for(IOS)
    assert apns.headers["apns-push-type"] == "background"
    assert apns.headers["apns-priority"] == "5"
    assert apns.headers["apns-expiration"] == "0"
    assert "apns-collapse-id" not in apns.headers
    assert apns.body == {"aps": {"content-available": 1}, "sync": "inbox"}


async def test_user_target_reaches_only_that_users_active_devices(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="alice")
    await stack.register(ANDROID, "android", user_id="alice")
    await stack.register(IOS_2, "ios", user_id="bob")
    await stack.register(ANDROID_2, "android", user_id="carol")
    await stack.publish(alert("u-1", {"users": ["alice", "carol", "nobody"]}))
    doc = await stack.wait_finished("u-1")
    assert doc["counts"]["targeted"] == 3
    assert doc["counts"]["delivered"] == 3
    assert {r.token for r in stack.apns.requests} == {IOS}
    assert {r.token for r in stack.fcm.requests} == {ANDROID, ANDROID_2}


async def test_segment_target_by_tags(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", tags=["beta", "fr"])
    await stack.register(IOS_2, "ios", tags=["beta"])
    await stack.register(ANDROID, "android", tags=["fr"])
    await stack.register(ANDROID_2, "android", tags=["beta", "fr", "vip"])
    await stack.publish(alert("seg-all", {"segment": {"tags_all": ["beta", "fr"]}}))
    await stack.publish(alert("seg-any", {"segment": {"tags_any": ["vip", "fr"], "tags_all": ["beta"]}}))
    await stack.wait_finished("seg-all")
    await stack.wait_finished("seg-any")
    all_tokens = [r.token for r in stack.apns.requests + stack.fcm.requests]
    # seg-all: IOS, ANDROID_2; seg-any (fr or vip, and beta): IOS, ANDROID_2
    assert sorted(all_tokens) == sorted([IOS, ANDROID_2, IOS, ANDROID_2])


async def test_segment_respects_category_opt_out(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", tags=["all"], opt_out=["promo"])
    await stack.register(IOS_2, "ios", tags=["all"])
    request = alert("promo-1", {"segment": {"tags_any": ["all"]}})
    request["message"]["category"] = "promo"
    await stack.publish(request)
    doc = await stack.wait_finished("promo-1")
    assert doc["counts"]["delivered"] == 1
    assert [r.token for r in stack.apns.requests] == [IOS_2]


async def test_bad_input_goes_to_dlq_with_reason_and_consumer_keeps_going(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    # One key, so one partition, so the dead letters keep this order.
    await stack.publish(
        b"{not json",
        {"id": "no-target", "app": "demo", "message": {"title": "x"}},
        alert("wrong-app", {"tokens": [IOS]}) | {"app": "unknown-app"},
        b"\xff\xfe binary",
        alert("after-bad", {"tokens": [IOS]}),
        key=b"k1",
    )
    await stack.wait_finished("after-bad")
    dead = await consume(stack.bootstrap, stack.kafka["dlq_topic"], 4)
    letters = [orjson.loads(r.value) for r in dead]
    assert [letter["reason"] for letter in letters] == [
        "invalid_json",
        "invalid_request",
        "invalid_request",
        "invalid_json",
    ]
    assert letters[0]["value"] == "{not json"
    assert letters[0]["source"]["key"] == "k1"
    assert dead[0].key == b"k1"
    assert letters[1]["field"] == "target" and letters[1]["error"] == "target: required"
    assert letters[2]["field"] == "app" and "unknown app" in letters[2]["error"]
    assert "value_base64" in letters[3]
    assert all(dict(r.headers)["pushsvc-dlq-reason"] for r in dead)
    assert await stack.notification("no-target") is None
    assert len(stack.apns.requests_for(IOS)) == 1


async def test_redelivered_request_id_is_not_sent_twice(stack: Stack) -> None:
    service = await stack.start()
    await stack.register(IOS, "ios")
    await stack.publish(alert("once", {"tokens": [IOS]}))
    await stack.wait_finished("once")
    # The same id again (a producer retry, or a redelivery after a crash before commit), also after a restart.
    await stack.publish(alert("once", {"tokens": [IOS]}))
    await stack.stop(service)
    await stack.start()
    await stack.publish(alert("once", {"tokens": [IOS]}), alert("marker", {"tokens": [IOS]}))
    await stack.wait_finished("marker")
    assert len([r for r in stack.apns.requests_for(IOS)]) == 2  # "once" one time, "marker" one time
    assert await stack.db.notifications.count_documents({"request_id": "once"}) == 1


async def test_offsets_are_committed_only_after_mongodb_recorded_the_request(stack: Stack, work_dir) -> None:
    mongo = nx27017(work_dir / f"mongo-outage-{stack.database}").start()
    try:
        await stack.use_mongo(f"mongodb://127.0.0.1:{mongo.port}")
        await stack.start(mongo_uri=stack.mongo_uri)
        await stack.register(IOS, "ios")
        mongo.stop()
        await stack.publish(alert("during-outage", {"tokens": [IOS]}))
        committed = await committed_offsets(stack)

        async def readiness() -> bool:
            async with stack.http.get(stack.url("/readyz")) as response:
                return response.status == 503 and (await response.json())["checks"]["mongodb"] != "ok"

        await wait_until(readiness, 15)
        assert await committed_offsets(stack) == committed
        assert stack.apns.requests == []
        mongo.start()
        doc = await stack.wait_finished("during-outage", timeout=30)
        assert doc["counts"]["delivered"] == 1
        assert len(stack.apns.requests_for(IOS)) == 1
        await wait_until(lambda: _offset_moved(stack, committed), 15)
    finally:
        await stack.close()
        mongo.stop()


async def _offset_moved(stack: Stack, before: int) -> bool:
    return await committed_offsets(stack) > before


async def committed_offsets(stack: Stack) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=stack.kafka["group_id"], enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(stack.requests_topic) or set()
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(stack.requests_topic) or set()
        total = 0
        for partition in partitions:
            total += await consumer.committed(TopicPartition(stack.requests_topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


async def test_scheduled_request_waits_for_send_at(stack: Stack) -> None:
    import datetime as dt

    await stack.start()
    await stack.register(IOS, "ios")
    # Read at once from now on: the 2 s before send_at are not spent on the consumer group's join (CI saw that).
    await stack.consuming()
    send_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    await stack.publish(alert("later", {"tokens": [IOS]}, options={"send_at": send_at.isoformat()}))
    doc = await wait_until(lambda: stack.notification("later"))
    assert doc["state"] == "scheduled"
    assert stack.apns.requests == []
    doc = await stack.wait_finished("later")
    received = stack.apns.requests_for(IOS)[0].time
    assert received >= send_at.timestamp()
    assert doc["counts"]["delivered"] == 1


async def test_invalid_token_is_deactivated_and_not_targeted_again(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios", user_id="dora")
    await stack.register(IOS_2, "ios", user_id="dora")
    stack.apns.script(IOS, status=410, reason="Unregistered")
    await stack.publish(alert("first", {"users": ["dora"]}))
    doc = await stack.wait_finished("first")
    assert doc["counts"]["invalid_token"] == 1 and doc["counts"]["delivered"] == 1
    device = await stack.db.devices.find_one({"token": IOS})
    assert not device["active"] and device["deactivated_reason"] == "Unregistered"
    await stack.publish(alert("second", {"users": ["dora"]}))
    doc = await stack.wait_finished("second")
    assert doc["counts"]["targeted"] == 1
    assert len(stack.apns.requests_for(IOS)) == 1


async def test_unknown_tokens_are_counted_not_dropped_silently(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    await stack.publish(alert("mixed", {"tokens": [IOS, "c3" * 32]}))
    doc = await stack.wait_finished("mixed")
    assert (doc["counts"]["targeted"], doc["counts"]["delivered"], doc["counts"]["unknown_token"]) == (2, 1, 1)


async def test_http_api_notification_is_idempotent_and_reports_status(stack: Stack) -> None:
    await stack.start()
    await stack.register(ANDROID, "android")
    request = alert("api-1", {"tokens": [ANDROID]})
    async with stack.http.post(stack.url("/v1/notifications"), json=request, headers=auth_headers()) as first:
        assert first.status == 201
    await stack.wait_finished("api-1")
    async with stack.http.post(stack.url("/v1/notifications"), json=request, headers=auth_headers()) as again:
        assert again.status == 200
        body = await again.json()
    assert body["state"] == "done"
    assert body["counts"]["delivered"] == 1 and body["counts"]["pending"] == 0
    assert len(stack.fcm.requests_for(ANDROID)) == 1


async def test_health_readiness_and_metrics(stack: Stack) -> None:
    await stack.start()
    await stack.register(IOS, "ios")
    await stack.publish(alert("m-1", {"tokens": [IOS]}))
    await stack.wait_finished("m-1")
    async with stack.http.get(stack.url("/healthz")) as response:
        assert response.status == 200
    async with stack.http.get(stack.url("/readyz")) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["checks"] == {"mongodb": "ok", "kafka": "ok", "scheduler": "ok"}
        # Group membership is reported beside the checks (a rejoin does not make the replica unready).
        assert body["consumer"]["state"] == "assigned" and body["consumer"]["partitions"] >= 1, body
    async with stack.http.get(stack.url("/metrics")) as response:
        text = await response.text()
    assert 'pushsvc_requests_ingested_total{outcome="accepted",source="kafka"}' in text
    assert 'pushsvc_deliveries_total{app="demo",outcome="delivered",provider="apns"}' in text
    assert "pushsvc_provider_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic abc"}, 401)],
)
async def test_api_requires_a_valid_key(stack: Stack, headers: dict, status: int) -> None:
    await stack.start()
    body = {"app": "demo", "token": IOS, "platform": "ios"}
    async with stack.http.post(stack.url("/v1/devices"), json=body, headers=headers) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_device_validation_names_the_field(stack: Stack) -> None:
    await stack.start()
    for body, field in [
        ({"app": "demo", "token": IOS, "platform": "windows"}, "platform"),
        ({"app": "demo", "token": IOS, "platform": "ios", "timezone": "Mars/Olympus"}, "timezone"),
        ({"app": "nope", "token": IOS, "platform": "ios"}, "app"),
        ({"app": "demo", "token": "bad token!", "platform": "ios"}, "token"),
    ]:
        async with stack.http.post(stack.url("/v1/devices"), json=body, headers=auth_headers()) as response:
            assert response.status == 400
            assert (await response.json())["error"]["field"] == field


async def test_every_finished_notification_publishes_one_outcome_event(stack: Stack) -> None:
    """Each finished notification yields exactly one event on push.outcomes, even with a busy lease heartbeat
    (a heartbeat landing after the run released its lease used to cancel the event; seen under load)."""
    # The shortest lease makes the heartbeat fire every ~0.7 s, around the finish of many notifications.
    await stack.start(dispatch={"lease_seconds": 2.0, "send_timeout_seconds": 1.0})
    await stack.register(ANDROID, "android")
    ids = [f"evt-{n}" for n in range(30)]
    await stack.publish(*(alert(i, {"tokens": [ANDROID]}) for i in ids))
    for notification_id in ids:
        await stack.wait_finished(notification_id)
    events = [orjson.loads(r.value) for r in await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 30)]
    assert sorted(e["id"] for e in events) == sorted(ids)
    assert all(e["state"] == "done" and e["counts"]["delivered"] == 1 for e in events)


async def test_outcome_event_lost_to_a_crash_is_published_by_the_sweep(stack: Stack) -> None:
    """A replica killed between marking a notification done and sending its event leaves event_pending set;
    the outcome sweep (of any replica) publishes it. Announced events are not repeated."""
    import time

    await stack.db.notifications.insert_one(
        {"_id": "crashed-before-event", "app": "demo", "state": "done", "finished_at": time.time() - 60,
         "event_pending": True, "error": None, "counts": {"targeted": 1, "delivered": 1}}
    )
    await stack.start(dispatch={"outcome_sweep_grace_seconds": 0.5})
    await stack.register(ANDROID, "android")
    await stack.publish(alert("announced", {"tokens": [ANDROID]}))
    await stack.wait_finished("announced")
    events = [orjson.loads(r.value) for r in await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 2)]
    assert sorted(e["id"] for e in events) == ["announced", "crashed-before-event"]
    # Every counter, as the contract requires, also those the stored document lacks.
    [counts] = [e["counts"] for e in events if e["id"] == "crashed-before-event"]
    assert counts == {**dict.fromkeys(COUNT_KEYS, 0), "targeted": 1, "delivered": 1}

    async def flags_cleared() -> bool:
        docs = [d async for d in stack.db.notifications.find({}, {"event_pending": 1})]
        return all(not d.get("event_pending") for d in docs)

    await wait_until(flags_cleared, 15)
    await asyncio.sleep(6)  # a further sweep round: nothing to send again
    again = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 2)
    assert len(again) == 2
