"""Two `pushsvc serve` replicas side by side, sharing the consumer group and the scheduler's leases."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.stack import Stack
from tests.reliability.harness import (
    Load,
    Replica,
    account,
    metric_sum,
    outcome_ids,
    publish_load,
    register_devices,
    wait_all_finished,
)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
async def test_two_replicas_do_all_work_once_and_both_are_busy(stack: Stack) -> None:
    a, b = Replica(stack, "replica-a"), Replica(stack, "replica-b")
    await asyncio.gather(a.start(), b.start())
    tokens = await register_devices(a, 30)
    load = Load()
    await publish_load(stack, load, tokens, 1000, 400, prefix="two")
    await wait_all_finished(stack, load, 120)
    await asyncio.sleep(0.5)
    acc = await account(stack, load)
    share = {}
    for replica in (a, b):
        text = await replica.metrics()
        share[replica.name] = {
            "ingested": metric_sum(text, "pushsvc_requests_ingested_total", outcome="accepted"),
            "delivered": metric_sum(text, "pushsvc_deliveries_total", outcome="delivered"),
        }
    outcomes = await outcome_ids(stack)
    missing = sorted(set(load.ids) - set(outcomes))
    print(acc.summary(), share, f"outcome events: {sum(outcomes.values())} missing={len(missing)} {missing[:5]}")
    await asyncio.gather(a.terminate(), b.terminate())
    assert acc.lost == [] and acc.unfinished == [] and acc.sent_without_delivery == []
    assert acc.delivered == acc.published == 1000
    assert acc.duplicates == {}
    assert sum(s["delivered"] for s in share.values()) == 1000
    assert all(s["delivered"] > 0 for s in share.values()), share  # the scheduler spreads work
    assert all(s["ingested"] > 0 for s in share.values()), share  # the group spreads partitions
    assert missing == [], f"{len(missing)} finished notifications without an outcome event"
    assert all(n == 1 for n in outcomes.values())
