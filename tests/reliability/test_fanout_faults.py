"""A segment fan-out while the MongoDB connections are reset under it: nothing may be skipped.

pushsvc (in-process) reaches a dedicated nx-27017 through the fault proxy; 3,000 tagged devices, a segment
request on Kafka, chunks of 300 that each take a few hundred ms at the (scripted) providers, so the
fan-out spans several seconds and its audience cursor is open between chunks when the resets land. The
peers' records are the truth: every device must have received the push, and the notification's counts
must say what the peers saw.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from pushsvc.config import MongoSettings
from pushsvc.store.database import Database
from pushsvc.store.devices import Device, DeviceStore
from tests.integration.stack import Stack
from tests.reliability.faultproxy import Fault, FaultPlan, proxied_nx27017
from tests.reliability.harness import android_token, ios_token, sends_per_request

pytestmark = pytest.mark.integration

DEVICES = 3000
CHUNK = 300
TAG = "fanout-faults"
PROVIDER_DELAY = 0.6  # every send waits this long at the peer: one chunk takes about that long


async def seed_devices(uri: str, database: str) -> list[str]:
    """3,000 devices with the segment's tag (half iOS, half Android), bulk-upserted like `devices import`."""
    db = Database.connect(MongoSettings(uri=uri, database=database))
    try:
        await db.ensure_indexes()
        records = [
            Device("demo", ios_token(i), "ios", tags=(TAG,))
            if i % 2 == 0
            else Device("demo", android_token(i), "android", tags=(TAG,))
            for i in range(DEVICES)
        ]
        store = DeviceStore(db)
        for first in range(0, DEVICES, 1000):
            await store.upsert_many(records[first : first + 1000])
        return [r.token for r in records]
    finally:
        await db.close()


def slow_providers(stack: Stack, tokens: list[str]) -> None:
    stack.apns.set_default(delay=PROVIDER_DELAY)
    for token in tokens:
        if token.startswith("fcm:"):
            stack.fcm.script(token, delay=PROVIDER_DELAY)


# A reset due while pushsvc holds no MongoDB connection (between chunks, right after the previous reset:
# PyMongo reconnects on demand) waits for one, so that every planned reset hits something.
CONNECTION_WAIT = 2.0
PLANS = {
    # The plan of the report: resets at 2.0, 3.3 and 6.1 s lost 2,000 of 3,000 devices.
    "report": FaultPlan([Fault(2.0, "reset"), Fault(3.3, "reset"), Fault(6.1, "reset")], seed="report",
                        connection_wait=CONNECTION_WAIT),
    **{
        f"seed-{s}": FaultPlan.generate(s, 3, kinds=("reset",), window=(1.0, 6.0), connection_wait=CONNECTION_WAIT)
        for s in (5, 23)
    },
}


@pytest.mark.parametrize("plan_name", list(PLANS))
async def test_segment_fanout_survives_database_connection_resets(
    stack: Stack, tmp_path: Path, plan_name: str
) -> None:
    plan = PLANS[plan_name]
    async with proxied_nx27017(tmp_path / "mongo", seed=plan_name) as mongo:
        await stack.use_mongo(f"mongodb://{mongo.direct_address}")  # the test's own reads bypass the proxy
        tokens = await seed_devices(f"mongodb://{mongo.direct_address}", stack.database)
        slow_providers(stack, tokens)
        service = await stack.start(
            dispatch={"chunk_size": CHUNK, "lease_seconds": 4.0, "send_timeout_seconds": 2.0},
            mongo_uri=f"mongodb://{mongo.address}",
        )
        rid = f"segment-{plan_name}"
        started = time.monotonic()
        await stack.publish(
            {
                "id": rid,
                "app": "demo",
                "target": {"segment": {"tags_any": [TAG]}},
                "message": {"title": "Faults", "body": "every device, once", "data": {"rid": rid}},
            }
        )
        plan.start(mongo.proxy)
        try:
            doc = await stack.wait_finished(rid, timeout=90)
        finally:
            await plan.cancel()
            await stack.stop(service)  # while its MongoDB still runs
        took = time.monotonic() - started
        sends = sends_per_request(stack)
        received = Counter({token: n for (r, token), n in sends.items() if r == rid})
        missing = [t for t in tokens if t not in received]
        duplicates = sum(n - 1 for n in received.values())
        counts = doc["counts"]
        report = (
            f"\n{plan.report()}\nfan-out took {took:.1f}s; state={doc['state']} counts={counts} "
            f"received={len(received)} missing={len(missing)} duplicate_sends={duplicates}"
        )
        print(report)
        assert doc["state"] == "done", report
        assert counts["targeted"] == DEVICES, report
        assert not missing, report
        # Every device the peers saw is counted once as delivered; a chunk repeated after a fault may send
        # twice (at-least-once), never more than the chunk in flight per fault.
        assert counts["delivered"] == len(received) == DEVICES, report
        assert duplicates <= CHUNK * len(plan.faults), report
        assert all(i.connections > 0 for i in plan.log if i.at < took), report
