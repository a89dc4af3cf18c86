"""FCM's per-project quota across replicas (dispatch/quota.py): three replicas running one campaign stay under a
quota the FCM peer enforces itself, and a QUOTA_EXCEEDED answer holds back every send of the project.

The quota is scaled down: 200 messages per 2 s window instead of 600,000 a minute.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pushsvc import metrics
from pushsvc.service import PushService
from pushsvc.simulators.fcm import DEFAULT_PROJECT
from tests.integration.stack import Stack, auth_headers, wait_until
from tests.integration.test_campaigns import api, campaign

LIMIT = 200
WINDOW = 2.0
SCOPE = f"fcm:{DEFAULT_PROJECT}"
# Ranges of 100 devices, one at a time per replica, so that every replica sends part of the campaign.
SPLIT = {"range_devices": 100, "max_active_ranges": 1, "poll_interval_seconds": 0.3, "chunk_size": 50}


def fcm_token(i: int, prefix: str) -> str:
    return f"fcm:{prefix}{i:060d}"


def fcm_section(stack: Stack, **quota: Any) -> dict[str, Any]:
    return {"fcm": {"service_account_file": str(stack.service_account), "endpoint": stack.fcm.base_url,
                    "ca_file": str(stack.pki.ca_file), **quota}}


async def register_android(stack: Stack, tokens: list[str], app: str = "demo", **fields: Any) -> None:
    for start in range(0, len(tokens), 100):  # in groups: a few hundred requests at once would only queue
        await asyncio.gather(*(stack.register(t, "android", app=app, **fields) for t in tokens[start:start + 100]))


def metric(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"scope": SCOPE}) or 0.0


def densest_window(times: list[float], window: float) -> int:
    """The most requests any span of `window` seconds held (sliding, at any offset)."""
    times = sorted(times)
    most, end = 0, 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] < t + window:
            end += 1
        most = max(most, end - start)
    return most


async def test_three_replicas_keep_a_per_project_quota_together_and_the_campaign_completes(stack: Stack) -> None:
    quota = stack.fcm.enforce_quota(LIMIT, WINDOW)
    blocks_before = metric("pushsvc_provider_quota_blocks_total")
    permits_before = metric("pushsvc_provider_quota_permits_total")
    providers = fcm_section(stack, quota_per_window=LIMIT, quota_window_seconds=WINDOW)
    services: list[PushService] = [await stack.start(dispatch=SPLIT, providers=providers) for _ in range(3)]
    tokens = [fcm_token(i, "q") for i in range(700)]
    await register_android(stack, tokens, tags=["promo"])

    status, created = await api(stack, "POST", "/v1/campaigns", campaign("quota"))
    assert status == 201, created
    doc = await stack.wait_finished("campaign:quota", timeout=90)

    assert doc["state"] == "done" and doc["counts"]["delivered"] == 700, doc["counts"]
    sent = [r for r in stack.fcm.requests if r.status == 200]
    assert Counter(r.token for r in sent) == Counter({t: 1 for t in tokens})  # every device once
    # The peer refused nothing, and no window of its own saw more than the quota ...
    assert quota.refused == 0
    assert max(quota.seen.values()) <= LIMIT, sorted(quota.seen.items())
    # ... nor did any 2 s span at another alignment (FCM's windows need not be aligned with ours).
    times = [r.time for r in stack.fcm.requests]
    assert len(times) == 700 and densest_window(times, WINDOW) <= LIMIT
    # It took several windows (700 at 200 per 2 s: at least 6 s), and every replica sent some of it.
    assert max(times) - min(times) > 3 * WINDOW
    holders = {str(r["released_claim"]).split("/")[0]
               for r in await stack.db.notifications.find({"parent": doc["_id"]}).to_list(None)}
    assert holders == {s.owner for s in services}
    # Permits came in blocks (the three replicas share this process's metrics): fewer round trips than requests.
    blocks = metric("pushsvc_provider_quota_blocks_total") - blocks_before
    permits = metric("pushsvc_provider_quota_permits_total") - permits_before
    assert 0 < blocks < 700 and permits >= 700, (blocks, permits)
    slices = await stack.db.quota_slices.find({"scope": {"$eq": SCOPE}}).to_list(None)
    # One counter per slice; those a window past their slice are already gone (the TTL index).
    assert slices and all(s["taken"] >= 1 and "expire_at" in s for s in slices)


async def test_a_quota_answer_holds_back_every_send_of_the_project_then_nothing_is_lost(stack: Stack) -> None:
    # A short minimum hold for the test (production: 60 s); the peer's Retry-After of 2 s is longer and wins.
    providers = fcm_section(stack, quota_backoff_seconds=0.5)
    await stack.start(dispatch={"chunk_size": 20, "concurrency_per_provider": 5}, providers=providers,
                      more_apps=["shop"])  # "shop" uses the same service account: the same Firebase project
    tokens = [fcm_token(i, "h") for i in range(30)]
    shop_tokens = [fcm_token(i, "s") for i in range(5)]
    await register_android(stack, tokens, tags=["promo"])
    await register_android(stack, shop_tokens, app="shop")
    stack.fcm.script(tokens[0], error_code="QUOTA_EXCEEDED", retry_after=2, times=1)
    for t in tokens[1:]:
        stack.fcm.script(t, delay=0.1)  # five at a time, 0.1 s each: the campaign would take 0.6 s unhindered

    status, created = await api(stack, "POST", "/v1/campaigns", campaign("held"))
    assert status == 201, created

    async def refused() -> Any:
        return next((r for r in stack.fcm.requests if r.status == 429), None)

    first = await wait_until(refused, 20, 0.01)
    # Half a second into the hold another app of the same project sends: it waits for the hold too.
    await asyncio.sleep(0.5)
    body = {"id": "shop-1", "app": "shop", "target": {"tokens": shop_tokens}, "message": {"title": "t", "body": "b"}}
    async with stack.http.post(stack.url("/v1/notifications"), json=body, headers=auth_headers()) as response:
        assert response.status in (200, 201, 202), await response.text()

    doc = await stack.wait_finished("campaign:held", timeout=30)
    shop = await stack.wait_finished("shop-1", timeout=30, app="shop")
    assert doc["state"] == "done" and doc["counts"]["delivered"] == 30, doc["counts"]
    assert shop["state"] == "done" and shop["counts"]["delivered"] == 5, shop["counts"]
    # Every device once (the refused one again after the hold), nothing else.
    delivered = Counter(r.token for r in stack.fcm.requests if r.status == 200)
    assert delivered == Counter({t: 1 for t in tokens + shop_tokens})
    assert [r.token for r in stack.fcm.requests if r.status != 200] == [tokens[0]]
    # Requests already on their way when the answer came arrive just after it; after that nothing of the project
    # (either app) until the Retry-After has passed.
    later = [r.time for r in stack.fcm.requests if r.time > first.time + 0.2]
    assert min(later) >= first.time + 2.0 - 0.05, sorted(t - first.time for t in later)
    # Which is after the hold: the rest of the campaign, its refused device again, and the other app's five.
    assert len(later) >= 25 + 1 + 5, sorted(t - first.time for t in later)
