"""What token kinds cost the device queries on nx-27017: milliseconds per query at 100k devices.

`python benchmarks/kind_filter_cost.py [--devices 100000] [--repeat 20]` starts its own nx-27017, seeds
devices (one user per three devices: a regular APNs token, a PushKit token, an FCM token; 1,000-device tag
segments), creates the service's indexes and times, per query the dispatcher makes:

* the audience queries as built before token kinds (no kind clause) and now (store/devices.py
  audience_filter / the few-users point lookup, for an alert and a VoIP push), next to other spellings of
  the kind clause;
* the deactivation match, without and with the registration guard (`$or` against the two updates
  store/devices.py sends instead).

Prints the median ms per query; nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pymongo import MongoClient  # noqa: E402

from pushsvc.dev.servers import nx27017  # noqa: E402
from pushsvc.model import Segment, Target  # noqa: E402
from pushsvc.store.audience import audience_filter, kind_filter, registered_no_later_than  # noqa: E402
from pushsvc.store.database import DEVICE_INDEXES  # noqa: E402

APP = "demo"
KINDS = ("apns", "apns_voip", "fcm")
PLATFORM = {"apns": "ios", "apns_voip": "ios", "fcm": "android"}
SEGMENT_SIZE = 1000


def seed(coll: Any, total: int) -> None:
    coll.drop()
    now = time.time()
    batch: list[dict] = []
    for i in range(total):
        kind = KINDS[i % 3]
        batch.append({
            "app": APP, "token": f"{i:064x}", "platform": PLATFORM[kind], "kind": kind, "user_id": f"u{i // 3}",
            "tags": ["all", PLATFORM[kind], f"g{i // SEGMENT_SIZE}"], "active": True, "opt_out": [],
            "created_at": now, "updated_at": now, "registered_at": now - 3600,
        })
        if len(batch) == 5000:
            coll.insert_many(batch, ordered=False)
            batch = []
    if batch:
        coll.insert_many(batch, ordered=False)
    coll.create_indexes(DEVICE_INDEXES)


def timed(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    found = run()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        found = run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), found


def measure(coll: Any, repeat: int) -> None:
    def without_kind(query: dict) -> dict:
        return {k: v for k, v in query.items() if k != "kind"}

    # (name, target, point lookup?): the queries the dispatcher sends for a users or segment target.
    shapes = [
        ("users, 1 user (point lookup)", Target(users=("u17",)), True),
        ("users, 100 users ($in, 500)", Target(users=tuple(f"u{n}" for n in range(0, 30_000, 300))), False),
        (f"segment, {SEGMENT_SIZE}-device tag (500)", Target(segment=Segment(tags_any=("g7",))), False),
    ]
    variants: dict[str, Callable[[dict], dict]] = {
        "before kinds (no kind clause)": without_kind,
        "alert, as sent: kind $ne apns_voip": lambda q: q,
        "voip, as sent on nx-27017: kind $ne apns": lambda q: {**q, **kind_filter("voip", exact=False)},
        "alert, natural: kind $in [apns, fcm, null]": lambda q: {**q, "kind": {"$in": ["apns", "fcm", None]}},
        "voip, natural: $in [apns_voip, fcm, null]": lambda q: {**q, "kind": {"$in": ["apns_voip", "fcm", None]}},
        "alert: kind $nin [apns_voip]": lambda q: {**q, "kind": {"$nin": ["apns_voip"]}},
    }
    print(f"{'query':<36} {'kind clause':<44} {'ms/query':>9} {'docs':>6}")
    for shape, target, point_lookup in shapes:
        base = audience_filter(APP, target, None, None, "alert", exact=False)
        if point_lookup:
            base["user_id"] = {"$eq": target.users[0]}  # what store/devices.py _find_each sends
        for name, variant in variants.items():
            query = variant(dict(base))
            if point_lookup:
                ms, found = timed(lambda query=query: len(list(coll.find(query))), repeat)
            else:
                ms, found = timed(lambda query=query: len(list(coll.find(query).sort("_id", 1).limit(500))), repeat)
            print(f"{shape:<36} {name:<44} {ms:9.1f} {found:6d}")

    # Deactivation: one token's match, as before, with the natural `$or` guard, and as the two updates sent.
    at = time.time()
    key = {"app": {"$eq": APP}, "token": {"$eq": f"{5:064x}"}, "active": {"$eq": True}}
    guards: dict[str, Callable[[], int]] = {
        "no registration guard (before)": lambda: len(list(coll.find(key))),
        "$or [registered_at $lte, null]": lambda: len(list(coll.find(
            {**key, "$or": [{"registered_at": {"$lte": at}}, {"registered_at": None}]}))),
        "two queries ($lte; $eq null), as sent": lambda: sum(
            len(list(coll.find({**key, **part}))) for part in registered_no_later_than(at)),
    }
    for name, run in guards.items():
        ms, found = timed(run, repeat)
        print(f"{'deactivation match (1 token)':<36} {name:<44} {ms:9.1f} {found:6d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server = nx27017(Path(work)).start()
        try:
            client = MongoClient(f"mongodb://127.0.0.1:{server.port}")
            coll = client["kindcost"]["devices"]
            started = time.monotonic()
            seed(coll, args.devices)
            print(f"seeded {args.devices} devices in {time.monotonic() - started:.0f} s", file=sys.stderr)
            measure(coll, args.repeat)
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
