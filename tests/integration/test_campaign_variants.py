"""A/B variants and a control group end to end: each user gets one variant on every device, the same one after a
restart and on another replica, the control group is counted and never sent, and the campaign's counts per
variant add up to what the provider's peer received."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import UTC, datetime

import orjson

from tests.integration.stack import Stack, auth_headers, consume, wait_until
from tests.integration.test_campaigns import api, campaign, received, token

USERS = 60


async def test_variants_and_control_hold_across_a_restart_and_add_up(stack: Stack) -> None:
    first = await stack.start()
    user_of: dict[str, str] = {}
    # Each user's two devices are far apart in token order: sent in different chunks, here before and after
    # the restart, by different service instances.
    for i in range(USERS):
        for device in (token(i, "a"), token(i + USERS, "a")):
            user_of[device] = f"u{i}"
    await asyncio.gather(*(stack.register(t, "ios", tags=["promo"], user_id=u) for t, u in user_of.items()))
    body = campaign("ab", throttle_per_second=30, control_percent=25, variants=[
        {"name": "A", "weight": 1, "message": {"title": "Title A", "localized": {"fr": {"title": "Titre A"}}}},
        {"name": "B", "weight": 1, "message": {"title": "Title B"}},
    ])
    del body["message"]
    status, created = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 201, created
    assert created["message"] is None and [v["name"] for v in created["variants"]] == ["A", "B"]
    assert created["control_percent"] == 25
    status, again = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 200 and again["variants"] == created["variants"], again
    reweighted = {**body, "variants": [{**body["variants"][0], "weight": 2}, body["variants"][1]]}
    status, answer = await api(stack, "POST", "/v1/campaigns", reweighted)
    assert status == 409 and answer["error"]["field"].startswith("variants"), answer

    await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= 10), 15)
    await stack.stop(first)  # mid-campaign: the cursor is saved, the rest goes from the next instance
    stopped_at = len(stack.apns.requests)
    await stack.start()
    doc = await stack.wait_finished("campaign:ab", timeout=30)
    assert doc["state"] == "done", doc
    assert len(stack.apns.requests) > stopped_at

    titles: dict[str, set[str]] = defaultdict(set)
    for request in stack.apns.requests:
        titles[user_of[request.token]].add(request.body["aps"]["alert"]["title"])
    sent_users = set(titles)
    control_users = {f"u{i}" for i in range(USERS)} - sent_users
    # One variant per user, on both devices, whichever instance sent each.
    assert all(len(t) == 1 for t in titles.values()), titles
    assert set(received(stack).values()) == {1}  # nobody twice
    assert {d for d, u in user_of.items() if u in sent_users} == set(received(stack))  # both devices of each user
    # A quarter held out (60 users: the binomial's 99.9% range), the rest split between A and B.
    assert 5 <= len(control_users) <= 27, len(control_users)
    by_title = Counter(next(iter(t)) for t in titles.values())
    assert set(by_title) == {"Title A", "Title B"} and min(by_title.values()) >= 8, by_title

    counts = doc["counts"]
    assert counts["targeted"] == 2 * USERS and counts["control"] == 2 * len(control_users)
    assert counts["delivered"] == len(stack.apns.requests)
    status, view = await api(stack, "GET", "/v1/campaigns/ab")
    assert status == 200
    per_variant = view["variant_counts"]
    assert per_variant["A"]["delivered"] == 2 * by_title["Title A"]
    assert per_variant["B"]["delivered"] == 2 * by_title["Title B"]
    assert per_variant["control"]["targeted"] == per_variant["control"]["control"] == 2 * len(control_users)
    assert per_variant["control"]["delivered"] == 0
    assert sum(v["targeted"] for v in per_variant.values()) == counts["targeted"]
    assert all(v["pending"] == 0 for v in per_variant.values())

    # Opens reported for every device of the A group are counted under A (the receipt finds the device's group
    # the way dispatch assigned it), and show in A's counts beside its deliveries.
    a_devices = [r.token for r in stack.apns.requests if r.body["aps"]["alert"]["title"] == "Title A"]
    now = datetime.now(UTC).isoformat()
    receipts = [{"notification_id": "campaign:ab", "token": t, "event": "opened", "at": now} for t in a_devices]
    async with stack.http.post(stack.url("/v1/receipts"), json={"app": "demo", "receipts": receipts},
                               headers=auth_headers()) as response:
        assert response.status == 200, await response.text()
    status, view = await api(stack, "GET", "/v1/campaigns/ab")
    assert view["variant_counts"]["A"]["opened"] == len(a_devices) == per_variant["A"]["delivered"]
    assert view["variant_counts"]["B"]["opened"] == 0 and view["funnel"]["by"]["variant"]["A"]["open_rate"] == 1.0

    # The outcome event carries the counts per variant too.
    records = await consume(stack.bootstrap, stack.kafka["outcomes_topic"], 1 + 2 * len(a_devices))
    events = [orjson.loads(r.value) for r in records]
    (event,) = [e for e in events if e["id"] == "campaign:ab" and "type" not in e]  # receipt events have a type
    opens = [e for e in events if e.get("type") == "receipt" and e["event"] == "opened"]
    assert len(opens) == len(a_devices) and {e["variant"] for e in opens} == {"A"}
    assert event["variants"]["A"]["delivered"] == per_variant["A"]["delivered"]
    assert event["counts"]["control"] == counts["control"]


async def test_bad_variants_are_refused_naming_the_field(stack: Stack) -> None:
    await stack.start()
    cases = [
        ({"variants": []}, "variants"),
        ({"variants": [{"name": "control", "message": {"title": "x"}}]}, "variants[0].name"),
        ({"variants": [{"name": "A", "message": {"title": "x"}}, {"name": "A", "message": {"title": "y"}}]},
         "variants[1].name"),
        ({"variants": [{"name": "A", "weight": 0, "message": {"title": "x"}}]}, "variants[0].weight"),
        ({"variants": [{"name": "A", "message": {"title": "x", "badge": -1}}]}, "variants[0].message.badge"),
        ({"variants": [{"name": "A", "message": {"title": "x"}}, {"name": "B", "message": {"title": "x" * 5000}}]},
         "variants[1].message"),
        ({"control_percent": 80}, "control_percent"),
        # One category for the whole campaign: opt-outs and caps are decided before a device's variant is drawn.
        ({"variants": [{"name": "A", "message": {"title": "x", "category": "news"}},
                       {"name": "B", "message": {"title": "y", "category": "promo"}}]}, "variants[1].message.category"),
    ]
    for extra, field in cases:
        body = campaign("bad", **extra)
        if "variants" in extra:
            del body["message"]
        status, answer = await api(stack, "POST", "/v1/campaigns", body)
        assert status == 400 and answer["error"]["field"].startswith(field), (extra, answer)
    both = campaign("both", variants=[{"name": "A", "message": {"title": "x"}}])
    status, answer = await api(stack, "POST", "/v1/campaigns", both)
    assert status == 400 and answer["error"]["field"] == "message", answer
    assert await stack.notification("campaign:bad") is None
