"""Crashes and restarts of real `pushsvc serve` processes under load: nothing lost, duplicates bounded.

Scaled down for the suite (the full 10k x 10 kills run is benchmarks/chaos_crash.py).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.stack import Stack
from tests.reliability.harness import (
    Load,
    Replica,
    account,
    crash_run,
    publish_load,
    register_devices,
    wait_all_finished,
)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
async def test_kill_9_during_load_loses_nothing_and_duplicates_only_in_flight_chunks(stack: Stack) -> None:
    report = await crash_run(stack, requests=1200, kills=3, rate=250, kill_window=(1.5, 3.0), finish_timeout=120)
    print(report.summary(), report.kills)
    acc = report.accounting
    assert acc.lost == [] and acc.unfinished == [] and acc.sent_without_delivery == []
    assert acc.delivered + acc.failed == acc.published == 1200
    assert acc.failed == 0, acc.failure_reasons
    # A duplicate send is only allowed for a notification that was claimed (in flight) at a kill.
    assert report.duplicates_outside_in_flight == {}
    # At most one extra send per kill that caught it in flight (a request resumed after one kill may be in
    # flight again at the next one).
    excess = {rid: n for rid, n in acc.duplicates.items() if n > report.in_flight_at_kills[rid]}
    assert excess == {}, (excess, report.kills)
    assert report.leaked == [], report.leaked[:5]


@pytest.mark.timeout(240)
async def test_graceful_restarts_under_load_send_nothing_twice(stack: Stack) -> None:
    report = await crash_run(
        stack, requests=800, kills=2, rate=250, kill_window=(1.5, 3.0), mode="term", finish_timeout=120
    )
    print(report.summary(), report.kills)
    acc = report.accounting
    assert acc.lost == [] and acc.unfinished == [] and acc.sent_without_delivery == []
    assert acc.delivered == acc.published == 800
    assert acc.duplicates == {}


@pytest.mark.timeout(240)
async def test_second_replica_joining_rebalances_without_duplicates(stack: Stack) -> None:
    first = await Replica(stack, "first", kafka={"max_poll_records": 100}).start()
    tokens = await register_devices(first, 30)
    load = Load()
    publisher = asyncio.create_task(publish_load(stack, load, tokens, 800, 200, prefix="reb"))
    await asyncio.sleep(1.5)
    second = await Replica(stack, "second", kafka={"max_poll_records": 100}).start()
    await publisher
    await wait_all_finished(stack, load, 120)
    await asyncio.sleep(0.5)
    acc = await account(stack, load)
    rebalanced = [e for e in first.events("commit_failed")]
    print(acc.summary(), "commit_failed on first:", len(rebalanced))
    await first.terminate()
    await second.terminate()
    assert acc.lost == [] and acc.unfinished == [] and acc.sent_without_delivery == []
    assert acc.delivered == acc.published == 800
    assert acc.duplicates == {}
