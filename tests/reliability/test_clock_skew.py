"""Replicas whose clocks disagree must still never send the same work twice.

Each replica is a real `pushsvc serve` process; the skewed one runs under libfaketime (Debian `faketime`),
which moves every clock the process reads (wall and monotonic) by a fixed offset, as a host with a broken
NTP would. A lease is 30 s; the skew is 45 s either way: a replica ahead takes leases as expired while the
holder still sends, and a holder behind writes leases that have already expired for everyone else.
"""

from __future__ import annotations

import asyncio
import glob
from collections import Counter

import orjson
import pytest

from tests.integration.stack import Stack, wait_until
from tests.reliability.harness import FINISHED, Replica, padded_tokens, register_tagged

pytestmark = pytest.mark.integration

SKEW = "45s"
LEASE_SECONDS = 30.0


def faketime(offset: str) -> dict[str, str]:
    """Environment that runs a process with all its clocks moved by `offset` (e.g. "+45s")."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libraries, "libfaketime missing: apt-get install faketime (.ci/run installs it)"
    return {"LD_PRELOAD": libraries[0], "FAKETIME": offset, "FAKETIME_DONT_RESET": "1"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("lane", ["batch", "fanout"])
@pytest.mark.parametrize("skewed", ["newcomer-ahead", "holder-behind"])
async def test_a_replica_with_a_skewed_clock_never_takes_work_still_in_flight(
    stack: Stack, lane: str, skewed: str
) -> None:
    dispatch = {"lease_seconds": LEASE_SECONDS, "send_timeout_seconds": 25.0, "chunk_size": 10}
    holder_env = faketime(f"-{SKEW}") if skewed == "holder-behind" else None
    holder = Replica(stack, "holder", dispatch=dispatch, env=holder_env)
    await holder.start()
    if lane == "batch":
        # One token answered after 20 s: the transactional request stays in flight that long.
        devices = padded_tokens("b1", 1, "c")
        for token in devices:
            stack.apns.script(token, delay=20.0, times=1)
        request = {"id": "in-flight", "app": "demo", "target": {"tokens": devices}, "message": {"title": "t"}}
    else:
        # 60 devices in chunks of 10, each answered after 3 s: the fan-out runs for ~18 s.
        devices = padded_tokens("f1", 60, "c")
        stack.apns.set_default(delay=3.0)
        request = {"id": "in-flight", "app": "demo", "target": {"segment": {"tags_any": ["skew"]}},
                   "message": {"title": "t"}}
    await register_tagged(holder, devices, "skew")
    await stack.publish(request)
    await stack.apns.wait_for_requests(1, timeout=20)  # the holder claimed it and is sending

    newcomer_env = faketime(f"+{SKEW}") if skewed == "newcomer-ahead" else None
    newcomer = Replica(stack, "newcomer", dispatch=dispatch, env=newcomer_env)
    await newcomer.start()

    async def finished() -> dict | None:
        doc = await stack.notification("in-flight")
        return doc if doc and doc["state"] in FINISHED else None

    doc = await wait_until(finished, timeout=90, interval=0.5)
    await asyncio.sleep(1.0)  # a late duplicate would arrive now
    sends = Counter(r.token for r in stack.apns.requests)
    try:
        assert doc["state"] == "done" and doc["counts"]["delivered"] == len(devices), doc["counts"]
        duplicates = {token[:8]: n for token, n in sends.items() if n > 1}
        assert duplicates == {}, f"{len(duplicates)} devices received the push more than once"
        assert sorted(sends) == sorted(devices)
        lost = holder.events("lease_lost") + newcomer.events("lease_lost")
        assert lost == [], lost
    finally:
        for replica in (holder, newcomer):
            if replica.alive:
                await replica.terminate()
    for line in holder.log_text().splitlines():
        if '"notification_finished"' in line:
            assert orjson.loads(line)["notification_id"] == "demo:in-flight"
