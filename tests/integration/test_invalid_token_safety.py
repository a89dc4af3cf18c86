"""Invalid-token answers that must not deactivate devices: a wrong app-wide setting, and late answers.

A wrong APNs environment answers BadDeviceToken for every token, a wrong FCM project SENDER_ID_MISMATCH:
the misconfiguration guard pauses that provider instead of deactivating the app's devices one by one. And
an answer about a token deactivates it only if the device was not registered again after the answer was
asked for (or, for an APNs 410, after the time APNs last confirmed the token invalid).
"""

from __future__ import annotations

import asyncio
import time

from tests.integration.stack import Stack, wait_until
from tests.integration.test_delivery_semantics import alert, finished_with, metrics_snapshot, paused


def ios(n: int) -> str:
    return f"c{n:03x}" * 16


def android(n: int) -> str:
    return f"fcm:{n:04d}-" + "g" * 50


async def register_all(stack: Stack, tokens: list[str], platform: str, **fields: object) -> None:
    for start in range(0, len(tokens), 20):  # a few at a time: the API shares the 2 CPUs with the servers
        await asyncio.gather(*(stack.register(t, platform, **fields) for t in tokens[start : start + 20]))


async def active_of(stack: Stack, tokens: list[str]) -> dict[str, bool]:
    docs = stack.db.devices.find({"app": "demo", "token": {"$in": tokens}})
    return {d["token"]: bool(d["active"]) async for d in docs}


def outcomes(provider: str) -> dict[str, tuple[str, dict[str, str]]]:
    labels = {"app": "demo", "provider": provider}
    return {
        f"{provider}_auth_error": ("pushsvc_deliveries_total", {**labels, "outcome": "auth_error"}),
        f"{provider}_invalid_token": ("pushsvc_deliveries_total", {**labels, "outcome": "invalid_token"}),
        f"{provider}_deactivated": ("pushsvc_invalid_tokens_total", labels),
        f"{provider}_trips": ("pushsvc_misconfig_guard_trips_total", labels),
    }


# ------------------------------------------------------------------------------------------ the guard


async def test_a_chunk_answered_with_wrong_setting_errors_pauses_the_provider_and_deactivates_nothing(
    stack: Stack,
) -> None:
    """A whole chunk answers BadDeviceToken (APNs, wrong environment) or SENDER_ID_MISMATCH (FCM, wrong
    project): both providers are paused, the alert's metrics say so, and no device is deactivated except
    the two whose tokens really are gone (410 Unregistered, UNREGISTERED)."""
    # Default guard settings (50% of at least 50 answers in 60 s); a short pause, in case some deliveries
    # queue behind it.
    await stack.start(dispatch={"auth_pause_seconds": 3.0})
    apns_tokens = [ios(n) for n in range(60)]
    fcm_tokens = [android(n) for n in range(60)]
    gone_ios, gone_android = ios(999), android(999)
    await register_all(stack, [*apns_tokens, gone_ios], "ios", tags=["everyone"])
    await register_all(stack, [*fcm_tokens, gone_android], "android", tags=["everyone"])
    stack.apns.set_default(status=400, reason="BadDeviceToken")
    stack.apns.script(gone_ios, status=410, reason="Unregistered")
    for token in fcm_tokens:
        stack.fcm.script(token, error_code="SENDER_ID_MISMATCH")
    stack.fcm.script(gone_android, error_code="UNREGISTERED")
    queries = outcomes("apns") | outcomes("fcm")
    before = await metrics_snapshot(stack, queries)

    await stack.publish(alert("wrong-environment", {"segment": {"tags_any": ["everyone"]}}))

    async def both_paused() -> bool:
        return await paused(stack, "apns") == 1 and await paused(stack, "fcm") == 1

    await wait_until(both_paused, 10, interval=0.05)
    await finished_with(stack, "wrong-environment", targeted=122, auth_error=120, invalid_token=2)

    active = await active_of(stack, [*apns_tokens, *fcm_tokens, gone_ios, gone_android])
    assert {token for token, is_active in active.items() if not is_active} == {gone_ios, gone_android}
    after = await metrics_snapshot(stack, queries)
    assert {key: after[key] - before[key] for key in queries} == {
        "apns_auth_error": 60, "apns_invalid_token": 1, "apns_deactivated": 1, "apns_trips": 1,
        "fcm_auth_error": 60, "fcm_invalid_token": 1, "fcm_deactivated": 1, "fcm_trips": 1,
    }
    # Every device was asked once: nothing was retried into the paused provider.
    assert len(stack.apns.requests) == 61 and len(stack.fcm.requests) == 61


async def test_a_genuinely_bad_token_among_good_ones_is_still_deactivated(stack: Stack) -> None:
    await stack.start(dispatch={"misconfig_guard_min_answers": 10})
    tokens = [ios(n) for n in range(20)]
    await register_all(stack, tokens, "ios", tags=["some"])
    await register_all(stack, [android(1), android(2)], "android", tags=["some"])
    stack.apns.script(ios(3), status=400, reason="BadDeviceToken")
    stack.apns.script(ios(4), status=400, reason="DeviceTokenNotForTopic")
    stack.fcm.script(android(1), error_code="SENDER_ID_MISMATCH")

    await stack.publish(alert("one-bad", {"segment": {"tags_any": ["some"]}}))
    await finished_with(stack, "one-bad", targeted=22, delivered=19, invalid_token=3)
    active = await active_of(stack, [*tokens, android(1), android(2)])
    assert {token for token, is_active in active.items() if not is_active} == {ios(3), ios(4), android(1)}
    assert await paused(stack, "apns") == 0 and await paused(stack, "fcm") == 0


async def test_the_guard_settings_apply_and_a_tripped_guard_holds_through_the_pause(stack: Stack) -> None:
    """With a 1 s pause, deliveries waiting behind it still meet the wrong setting afterwards: the guard
    stays tripped (it has not seen healthy answers yet), so those devices are kept too."""
    await stack.start(dispatch={"misconfig_guard_min_answers": 4, "misconfig_guard_share": 0.8,
                                "concurrency_per_provider": 2, "auth_pause_seconds": 1.0})
    tokens = [ios(n) for n in range(10)]
    await register_all(stack, tokens, "ios")
    stack.apns.set_default(status=400, reason="BadDeviceToken")

    await stack.publish(alert("slow-wrong", {"tokens": tokens}))
    await finished_with(stack, "slow-wrong", targeted=10, auth_error=10)
    assert all((await active_of(stack, tokens)).values())
    first, last = stack.apns.requests[0].time, stack.apns.requests[-1].time
    assert last - first >= 0.98  # the pause held the rest back


# ----------------------------------------------------------------------------- answers about the past


async def test_a_device_registered_after_the_410_timestamp_stays_active(stack: Stack) -> None:
    await stack.start()
    await stack.register(ios(1), "ios")
    await stack.register(ios(2), "ios")
    await asyncio.sleep(0.05)
    invalid_since_ms = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    await stack.register(ios(1), "ios")  # the app registered the token again after APNs' timestamp
    for token in (ios(1), ios(2)):
        stack.apns.script(token, status=410, reason="Unregistered", timestamp_ms=invalid_since_ms)

    await stack.publish(alert("late-410", {"tokens": [ios(1), ios(2)]}))
    await finished_with(stack, "late-410", targeted=2, invalid_token=2)
    assert await active_of(stack, [ios(1), ios(2)]) == {ios(1): True, ios(2): False}


async def test_a_device_registered_again_while_its_push_is_in_flight_stays_active(stack: Stack) -> None:
    """The answer is about the token as it was when the request went out; a registration after that
    (here during the provider's slow answer) wins, for APNs and FCM alike."""
    await stack.start()
    await stack.register(ios(1), "ios")
    await stack.register(android(1), "android")
    await stack.register(android(2), "android")
    stack.apns.script(ios(1), status=410, reason="Unregistered", delay=1.0)  # timestamp: when it answers
    stack.fcm.script(android(1), error_code="UNREGISTERED", delay=1.0)
    stack.fcm.script(android(2), error_code="UNREGISTERED", delay=1.0)

    await stack.publish(alert("in-flight", {"tokens": [ios(1), android(1), android(2)]}))
    await stack.apns.wait_for_requests(1)
    await stack.fcm.wait_for_requests(2)
    await stack.register(ios(1), "ios")
    await stack.register(android(1), "android")
    await finished_with(stack, "in-flight", targeted=3, invalid_token=3)
    assert await active_of(stack, [ios(1), android(1), android(2)]) == {
        ios(1): True, android(1): True, android(2): False}


async def test_a_device_from_before_registered_at_is_still_deactivated(stack: Stack) -> None:
    """Documents written before registrations were timed have no `registered_at` (nor `kind`): a dead
    token among them is deactivated like any other."""
    now = time.time()
    legacy = {"app": "demo", "active": True, "tags": [], "opt_out": [], "created_at": now, "updated_at": now}
    await stack.db.devices.insert_many([
        {**legacy, "token": ios(1), "platform": "ios"},
        {**legacy, "token": android(1), "platform": "android"},
    ])
    await stack.start()
    stack.apns.script(ios(1), status=410, reason="Unregistered")
    stack.fcm.script(android(1), error_code="UNREGISTERED")

    await stack.publish(alert("old-dead", {"tokens": [ios(1), android(1)]}))
    await finished_with(stack, "old-dead", targeted=2, invalid_token=2)
    assert await active_of(stack, [ios(1), android(1)]) == {ios(1): False, android(1): False}
    assert await stack.db.devices.count_documents({"registered_at": {"$exists": True}}) == 0
