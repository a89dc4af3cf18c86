"""Dry runs end to end: every device's payload is built and checked, nothing is delivered, nothing changes.

The peers are the witnesses: the APNs peer must receive nothing at all, the FCM peer only `validate_only`
requests (which FCM checks and never delivers). A token FCM calls unregistered during a dry run is counted,
not deactivated: a dry run changes nothing but its own counts.
"""

from __future__ import annotations

import orjson

from tests.integration.stack import Stack, auth_headers, consume
from tests.integration.test_delivery_semantics import alert, api_view, metric, register_all


def ios(n: int) -> str:
    return f"d{n:03x}" * 16


def android(n: int) -> str:
    return f"fcm:dry-{n:04d}-" + "k" * 40


async def test_a_dry_run_checks_every_device_and_delivers_nothing(stack: Stack) -> None:
    await stack.start()
    await register_all(stack, [ios(n) for n in range(3)], "ios", user_id="dora")
    await register_all(stack, [android(n) for n in range(4)], "android", user_id="dora")
    stack.fcm.script(android(0), error_code="UNREGISTERED")
    stack.fcm.script(android(1), error_code="INVALID_ARGUMENT", message="Invalid value at 'message.android'")

    async def outcomes() -> tuple[float, ...]:
        return (
            await metric(stack, "pushsvc_dry_run_outcomes_total", provider="fcm", outcome="validated"),
            await metric(stack, "pushsvc_dry_run_outcomes_total", provider="fcm", outcome="rejected"),
            await metric(stack, "pushsvc_deliveries_total", app="demo", outcome="rejected"),
        )

    before = await outcomes()  # the metrics registry is the process's: count what this test adds
    await stack.publish(alert("dry-1", {"users": ["dora"]}, options={"dry_run": True}))
    doc = await stack.wait_finished("dry-1")

    assert doc["state"] == "done"
    assert stack.apns.requests == []  # APNs has no dry run: never called
    fcm = stack.fcm.requests
    assert len(fcm) == 4 and all(r.validate_only for r in fcm)
    view = await api_view(stack, "dry-1")
    counts = view["counts"]
    assert (counts["targeted"], counts["validated"], counts["invalid_token"], counts["rejected"]) == (7, 5, 1, 1)
    assert counts["delivered"] == 0 and counts["pending"] == 0
    assert view["dry_run"] == {
        "by_platform": {"ios": {"validated": 3}, "android": {"validated": 2, "invalid_token": 1, "rejected": 1}}
    }
    # Not deactivated: a dry run changes nothing but its own counts.
    assert await stack.db.devices.count_documents({"app": "demo", "active": False}) == 0

    # Its own metric: a dry run's rejections (what it is run to find) must not feed the failure-ratio alert.
    after = await outcomes()
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 0]

    [event] = [orjson.loads(r.value) for r in await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1)]
    assert event["counts"]["validated"] == 5
    assert event["dry_run"]["by_platform"]["android"]["invalid_token"] == 1


async def test_a_normal_push_has_no_dry_run_fields(stack: Stack) -> None:
    await stack.start()
    await register_all(stack, [ios(9)], "ios", user_id="ed")
    await stack.publish(alert("real-1", {"users": ["ed"]}))
    await stack.wait_finished("real-1")
    view = await api_view(stack, "real-1")
    assert view["dry_run"] is None
    assert view["counts"]["delivered"] == 1 and view["counts"]["validated"] == 0
    assert len(stack.apns.requests) == 1


async def test_a_dry_run_campaign_previews_each_platform_and_locale_then_validates_its_audience(
    stack: Stack,
) -> None:
    await stack.start()
    await register_all(stack, [ios(n) for n in range(20, 25)], "ios", tags=["bf"], locale="de-DE")
    await register_all(stack, [android(n) for n in range(20, 23)], "android", tags=["bf"])
    body = {
        "id": "black-friday-check",
        "name": "Black Friday (dry run)",
        "app": "demo",
        "audience": {"segment": {"tags_any": ["bf"]}},
        "message": {"title": "Sale", "body": "50% off", "localized": {"de": {"title": "Angebot"}}},
        "options": {"dry_run": True, "collapse_key": "bf"},
    }
    async with stack.http.post(stack.url("/v1/campaigns"), json=body, headers=auth_headers()) as response:
        assert response.status == 201, await response.text()
        created = await response.json()

    preview = created["preview"]
    assert preview["audience"] == 8
    payloads = preview["payloads"]
    assert set(payloads) == {"ios", "android"}
    assert set(payloads["ios"]) == {"default", "de"}
    assert payloads["ios"]["de"]["body"]["aps"]["alert"] == {"title": "Angebot", "body": "50% off"}
    assert payloads["ios"]["default"]["headers"]["apns-collapse-id"] == "bf"
    assert "authorization" not in {k.lower() for k in payloads["ios"]["default"]["headers"]}
    assert payloads["android"]["de"]["body"]["message"]["notification"]["title"] == "Angebot"
    # A preview names no device.
    assert payloads["android"]["default"]["body"]["message"]["token"] != android(20)
    # The same body again: 200 with the campaign as created, its preview too (from the request it holds).
    async with stack.http.post(stack.url("/v1/campaigns"), json=body, headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
        again = await response.json()
    assert again["id"] == "black-friday-check" and again["preview"] == preview

    doc = await stack.wait_finished("campaign:black-friday-check")
    assert doc["counts"]["validated"] == 8 and doc["counts"]["delivered"] == 0
    assert stack.apns.requests == []
    assert len(stack.fcm.requests) == 3 and all(r.validate_only for r in stack.fcm.requests)
    async with stack.http.get(
        stack.url("/v1/campaigns/black-friday-check?app=demo"), headers=auth_headers()
    ) as response:
        view = await response.json()
    assert view["options"]["dry_run"] is True
    assert view["dry_run"]["by_platform"] == {"ios": {"validated": 5}, "android": {"validated": 3}}


async def test_pushsvc_send_dry_run_publishes_a_dry_run(stack: Stack) -> None:
    import asyncio

    from pushsvc.cli import main

    service = await stack.start()
    await register_all(stack, [ios(30)], "ios", user_id="cli-user")
    config = stack.tmp_path / "config-0.yaml"  # written by stack.start for this test's topics and database
    assert service is not None and config.exists()
    code = await asyncio.to_thread(
        main, ["send", "--config", str(config), "--app", "demo", "--user", "cli-user", "--id", "cli-dry", "--dry-run"]
    )
    assert code == 0
    view_doc = await stack.wait_finished("cli-dry")
    assert view_doc["counts"]["validated"] == 1 and view_doc["counts"]["delivered"] == 0
    assert stack.apns.requests == []


async def test_a_dry_runs_auth_error_pauses_nothing_and_pages_no_one(stack: Stack) -> None:
    """A dry run changes nothing shared: an auth error FCM gives its check neither pauses the app's FCM for live
    pushes nor shows in the metrics the alerts read."""
    await stack.start()
    await register_all(stack, [android(40)], "android", user_id="fay")
    await register_all(stack, [android(41)], "android", user_id="gus")
    stack.fcm.script(android(40), error_code="THIRD_PARTY_AUTH_ERROR")
    paused = ("pushsvc_provider_paused", {"app": "demo", "provider": "fcm"})

    await stack.publish(alert("dry-auth", {"users": ["fay"]}, options={"dry_run": True}))
    doc = await stack.wait_finished("dry-auth")
    assert doc["counts"]["auth_error"] == 1 and doc["counts"]["auth_error:android"] == 1
    assert await metric(stack, paused[0], **paused[1]) == 0

    await stack.publish(alert("live-after", {"users": ["gus"]}))
    live = await stack.wait_finished("live-after", timeout=5)  # no pause to wait out (auth_pause_seconds)
    assert live["counts"]["delivered"] == 1
