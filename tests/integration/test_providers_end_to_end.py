"""Every provider end to end: requests in through Kafka, devices from the API, pushes out to four peers.

The peers are the witnesses, and each checks what a real provider would: the APNs peer the topic and push
type, the FCM peer the v1 message, the Huawei peer its token flow and the exact HMS JSON, the Web Push peer
decrypts every body with the subscription's private key and verifies the VAPID token. The counts a
notification reports are checked against what the peers received.
"""

from __future__ import annotations

import pytest

from pushsvc.simulators.hms import HmsPeer
from pushsvc.simulators.webpush import VapidKey, WebPushPeer
from tests.integration.stack import APNS_TOPIC, Stack
from tests.integration.test_delivery_semantics import api_view

LIVE_ACTIVITY_TOPIC = f"{APNS_TOPIC}.push-type.liveactivity"


@pytest.fixture
async def everything(stack: Stack, newer_providers: dict) -> Stack:
    await stack.start(providers=newer_providers)
    return stack


def ios(n: int) -> str:
    return f"e{n:03x}" * 16


async def finished(stack: Stack, request_id: str) -> dict:
    doc = await stack.wait_finished(request_id)
    assert doc["state"] == "done", doc
    return (await api_view(stack, request_id))["counts"]


async def test_one_alert_reaches_a_user_on_all_four_providers_in_their_language(
    everything: Stack, web_peer: WebPushPeer, hms_peer: HmsPeer, vapid: VapidKey
) -> None:
    stack = everything
    subscription = web_peer.subscribe(application_server_key=vapid.public_key)
    await stack.register(ios(1), "ios", user_id="uma", locale="de-DE")
    await stack.register("fcm:" + "u" * 60, "android", user_id="uma", locale="de-DE")
    await stack.register("hms-" + "u" * 60, "huawei", user_id="uma", locale="de-DE")
    web = await stack.register("", "web", user_id="uma", locale="de-DE", subscription=subscription.as_json())
    assert web["token"].startswith("web:")

    await stack.publish({
        "id": "shipped-1", "app": "demo", "target": {"users": ["uma"]},
        "message": {"title": "Shipped", "body": "On its way", "data": {"order": 42, "gift": True},
                    "localized": {"de": {"title": "Versandt"}}},
        "options": {"collapse_key": "order-42", "ttl_seconds": 600},
    })
    counts = await finished(stack, "shipped-1")

    assert (counts["targeted"], counts["delivered"]) == (4, 4)
    [push] = web_peer.pushes_for(subscription)
    assert push.problem is None  # decrypted with the subscription's key, VAPID verified
    assert push.payload["title"] == "Versandt" and push.payload["body"] == "On its way"
    assert push.payload["data"] == {"order": 42, "gift": True}
    assert push.headers["urgency"] == "high" and 0 < int(push.headers["ttl"]) <= 600
    [huawei] = hms_peer.requests_for("hms-" + "u" * 60)
    assert huawei.status == 200 and huawei.message["android"]["notification"]["title"] == "Versandt"
    assert huawei.message["data"] == '{"order":"42","gift":"true"}'
    assert len(stack.apns.requests_for(ios(1))) == 1 and len(stack.fcm.requests_for("fcm:" + "u" * 60)) == 1
    # What the peers received is what was counted, nothing more.
    received = len(stack.apns.requests) + len(stack.fcm.requests) + len(hms_peer.requests) + len(web_peer.pushes)
    assert received == counts["delivered"]


async def test_live_activity_updates_reach_only_their_activity_and_starts_only_push_to_start_tokens(
    everything: Stack,
) -> None:
    stack = everything
    await stack.register(ios(10), "ios", user_id="lea")  # a regular token: never a Live Activity
    await stack.register(ios(11), "ios", user_id="lea", kind="apns_liveactivity", activity_id="order-7")
    await stack.register(ios(12), "ios", user_id="lea", kind="apns_liveactivity", activity_id="order-8")
    await stack.register(ios(13), "ios", user_id="lea", kind="apns_pushtostart")

    update = {"event": "update", "content_state": {"eta": 5}, "activity_id": "order-7"}
    await stack.publish({"id": "eta-1", "app": "demo", "target": {"users": ["lea"]},
                         "message": {"live_activity": update}, "options": {"push_type": "liveactivity"}})
    counts = await finished(stack, "eta-1")
    assert (counts["targeted"], counts["delivered"]) == (1, 1)
    [sent] = stack.apns.requests
    assert sent.token == ios(11)
    assert (sent.headers["apns-topic"], sent.headers["apns-push-type"]) == (LIVE_ACTIVITY_TOPIC, "liveactivity")
    aps = sent.body["aps"]
    assert sent.live_activity is not None and sent.live_activity.problems == ()
    doc = await stack.notification("eta-1")
    # The timestamp was stamped when the request was accepted, and stored with it.
    assert aps["timestamp"] == int(doc["created_at"])
    assert '"timestamp":' in doc["request"]

    start = {"event": "start", "content_state": {"eta": 30}, "attributes_type": "Delivery",
             "attributes": {"order": "9"}}
    await stack.publish({"id": "start-1", "app": "demo", "target": {"users": ["lea"]},
                         "message": {"title": "Your order", "live_activity": start},
                         "options": {"push_type": "liveactivity"}})
    counts = await finished(stack, "start-1")
    assert (counts["targeted"], counts["delivered"]) == (1, 1)
    assert [r.token for r in stack.apns.requests_for(ios(13))] == [ios(13)]
    assert len(stack.apns.requests) == 2


async def test_a_subscription_stored_pointing_inside_is_never_called_and_is_deactivated(
    everything: Stack, web_peer: WebPushPeer, vapid: VapidKey
) -> None:
    """The API refuses such an endpoint; one stored by other means (an older version, a direct import into
    MongoDB) is refused by the adapter before any connection and deactivated."""
    stack = everything
    good = web_peer.subscribe(application_server_key=vapid.public_key)
    await stack.register("", "web", user_id="ivy", subscription=good.as_json())
    inside = web_peer.subscribe(application_server_key=vapid.public_key).as_json()
    inside["endpoint"] = "https://169.254.169.254/latest/meta-data"
    await stack.db.devices.insert_one({
        "app": "demo", "token": "web:inside-" + "x" * 30, "platform": "web", "kind": "webpush",
        "user_id": "ivy", "active": True, "subscription": inside, "tags": [], "opt_out": [],
    })

    await stack.publish({"id": "hello-ivy", "app": "demo", "target": {"users": ["ivy"]},
                         "message": {"title": "Hi"}})
    counts = await finished(stack, "hello-ivy")

    assert (counts["targeted"], counts["delivered"], counts["invalid_token"]) == (2, 1, 1)
    assert len(web_peer.pushes) == 1 and web_peer.pushes[0].subscription_id == good.id
    device = await stack.db.devices.find_one({"token": "web:inside-" + "x" * 30})
    assert (device["active"], device["deactivated_reason"]) == (False, "EndpointNotAllowed")


async def test_a_dry_run_builds_for_every_platform_and_calls_no_one_but_fcms_check(
    everything: Stack, web_peer: WebPushPeer, hms_peer: HmsPeer, vapid: VapidKey
) -> None:
    stack = everything
    for n in range(3):
        await stack.register(ios(20 + n), "ios", user_id="dan")
    await stack.register("fcm:" + "d" * 60, "android", user_id="dan")
    await stack.register("hms-" + "d" * 60, "huawei", user_id="dan")
    sub = web_peer.subscribe(application_server_key=vapid.public_key)
    await stack.register("", "web", user_id="dan", subscription=sub.as_json())

    await stack.publish({"id": "dry-all", "app": "demo", "target": {"users": ["dan"]},
                         "message": {"title": "Check"}, "options": {"dry_run": True}})
    doc = await stack.wait_finished("dry-all")
    view = await api_view(stack, "dry-all")

    assert doc["state"] == "done"
    assert view["counts"]["validated"] == 6 and view["counts"]["delivered"] == 0
    assert view["dry_run"]["by_platform"] == {
        "ios": {"validated": 3}, "android": {"validated": 1}, "huawei": {"validated": 1}, "web": {"validated": 1}
    }
    assert stack.apns.requests == [] and hms_peer.requests == [] and web_peer.pushes == []
    assert [r.validate_only for r in stack.fcm.requests] == [True]


async def test_a_campaigns_audience_counts_only_the_devices_its_push_reaches(everything: Stack) -> None:
    """The count a marketer reads (and ranges are sized by) names the token kinds exactly: an alert does not
    count VoIP or Live Activity tokens, a Live Activity update counts only its activity's update tokens."""
    from tests.integration.stack import auth_headers

    stack = everything
    for n, fields in enumerate([
        {}, {"kind": "apns_voip"}, {"kind": "apns_liveactivity", "activity_id": "a-1"},
        {"kind": "apns_liveactivity", "activity_id": "a-2"}, {"kind": "apns_pushtostart"},
    ]):
        await stack.register(ios(40 + n), "ios", tags=["vip"], **fields)
    await stack.register("fcm:" + "v" * 60, "android", tags=["vip"])

    async def audience(campaign_id: str, message: dict, options: dict) -> int:
        body = {"id": campaign_id, "name": campaign_id, "app": "demo", "audience": {"segment": {"tags_any": ["vip"]}},
                "message": message, "options": {"dry_run": True, **options}}
        async with stack.http.post(stack.url("/v1/campaigns"), json=body, headers=auth_headers()) as response:
            assert response.status == 201, await response.text()
            return (await response.json())["preview"]["audience"]

    assert await audience("alert", {"title": "Hi"}, {}) == 2  # the regular APNs token and the FCM one
    update = {"live_activity": {"event": "update", "content_state": {"s": 1}, "activity_id": "a-2"}}
    assert await audience("la-update", update, {"push_type": "liveactivity"}) == 1
    start = {"title": "Go", "live_activity": {"event": "start", "content_state": {"s": 1}, "attributes_type": "T",
                                              "attributes": {}}}
    assert await audience("la-start", start, {"push_type": "liveactivity"}) == 1
