"""One campaign over three real `pushsvc serve` processes, one killed with SIGKILL mid-campaign.

Every replica takes ranges of the same campaign; the killed one's ranges are resumed by the others once their
lease expires; a device is sent twice only if it was in a chunk the killed replica had on the wire; the
campaign's counts are exact (each device counted once) and it is announced as done.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import pytest

from tests.integration.stack import API_KEY, Stack, wait_until
from tests.reliability.harness import Replica, outcome_ids, register_tagged

pytestmark = pytest.mark.integration

DEVICES = 1200
CHUNK = 20
DISPATCH = {
    "range_devices": 100,  # 1,200 devices: 12 wanted, 8 ranges (a power of two, rounded down)
    "max_active_ranges": 1,
    "chunk_size": CHUNK,
    "poll_interval_seconds": 0.5,
    "lease_seconds": 3.0,
}


@pytest.mark.timeout(240)
async def test_kill_9_of_one_of_three_replicas_mid_campaign(stack: Stack) -> None:
    replicas = [await Replica(stack, f"r{n}", dispatch=DISPATCH).start() for n in range(3)]
    try:
        rng = random.Random(16)
        tokens = [f"{rng.getrandbits(256):064x}" for _ in range(DEVICES)]  # real tokens look random
        await asyncio.gather(*(register_tagged(replicas[n], tokens[n::3], "wide") for n in range(3)))
        stack.apns.set_default(delay=0.15)  # a chunk takes ~0.15 s: the campaign lasts several seconds

        body = {"id": "wide", "name": "Wide", "app": "demo", "audience": {"segment": {"tags_any": ["wide"]}},
                "message": {"title": "Hello"}}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http, \
                http.post(f"{replicas[0].url}/v1/campaigns", json=body) as response:
            assert response.status == 201, await response.text()

        victim = replicas[1]
        await wait_until(lambda: asyncio.sleep(0, bool(victim.events("range_finished"))), 30)
        await wait_until(lambda: asyncio.sleep(0, len(stack.apns.requests) >= DEVICES // 3), 30)
        await victim.kill()
        killed_at = len(stack.apns.requests)

        doc = await stack.wait_finished("campaign:wide", timeout=120)
        sent = Counter(r.token for r in stack.apns.requests)
        print(f"sent {sum(sent.values())} (at the kill: {killed_at}), ranges {doc.get('ranges')}")
        assert doc["state"] == "done", doc
        assert set(sent) == set(tokens)  # nothing lost
        # Counted once each, whoever sent it and however often.
        assert doc["counts"]["targeted"] == doc["counts"]["delivered"] == DEVICES
        # Twice at most, and only what the killed replica could have had on the wire: its one range's chunk.
        twice = [t for t, n in sent.items() if n > 1]
        assert max(sent.values()) <= 2 and len(twice) <= CHUNK, twice
        # Every replica worked ranges of this one campaign (the victim before it died).
        for replica in replicas:
            assert replica.events("range_finished"), replica.name
        survivors = [r for r in replicas if r is not victim]
        resumed = {e["notification_id"] for r in survivors for e in r.events("range_finished")}
        assert len(resumed) + len(victim.events("range_finished")) >= doc["ranges"]
        assert (await outcome_ids(stack))["campaign:wide"] >= 1
    finally:
        for replica in replicas:
            if replica.alive:
                await replica.terminate()
