"""What each MongoDB operation of a one-push-to-one-user request costs nx-27017, by batch size.

`python benchmarks/store_op_cost.py [--devices 100000] [--notifications 20000] [--sizes 1,10,50,200,500]
[--repeat 10] [--grow 40000]` starts its own nx-27017, seeds devices (one per user, like benchmarks/run.py)
with DEVICE_INDEXES and notifications (store/notifications.py new_document; half done, half scheduled an hour
ahead so that no seeded one is a claim candidate) with NOTIFICATION_INDEXES, then prints:

* nx-27017's `buildInfo` and `hello` replies (every field; what tells it apart from a real MongoDB);
* per operation the batch lane makes for N one-user requests at once and per N, the median wall ms per batch
  and the median nx-27017 CPU ms per batch and per item (notification, or user for the device lookups):
  insert_many, the device lookups (one `$eq` query per user, sequentially, or one `$in`), the finish (one
  UpdateOne per notification, or one update_many for notifications ending alike, as finish_many sends),
  clearing `event_pending`, the read-back after a claim, a renewal, and the claim's candidate query with N
  accepted notifications due (N = 0 too);
* whether the `_id $in` operations scan the notifications: the same operations at N = 1 and 10 before and
  after --grow more (finished) notifications are added, next to `_id $eq` finds, a find_one of a missing
  `_id` (the floor of any read) and a `$in` on an unindexed field (a scan for sure). On nx-27017 every read
  of a collection with a TTL index (the notifications' retention index) first runs the TTL purge, a
  delete_many on the TTL field (neosqlite Collection._auto_purge_ttl); writes do not.

The server's CPU comes from /proc/PID/task/*/schedstat (nanoseconds, every thread of the server); the
`stat CPU` column is utime+stime from /proc/PID/stat (as benchmarks/run.py reads pushsvc's), a mean over
the repetitions since it only moves in clock ticks (10 ms). Every repetition works on fresh documents,
removed again afterwards (not timed), so the collection keeps its size. One repetition is run first as a
warm-up. Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pymongo import MongoClient, UpdateOne  # noqa: E402

from pushsvc.dev.servers import nx27017  # noqa: E402
from pushsvc.model import parse_request  # noqa: E402
from pushsvc.scheduling.lanes import lane_for  # noqa: E402
from pushsvc.store.counts import full_counts  # noqa: E402
from pushsvc.store.database import DEVICE_INDEXES, NOTIFICATION_INDEXES  # noqa: E402
from pushsvc.store.notifications import Claim, new_document  # noqa: E402

APP = "bench"
KNOWN_APPS = frozenset({APP})
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Request numbers past the seeded ones: every document a repetition writes has an id never used before.
_fresh = itertools.count(10_000_000)


def cpu_seconds(pid: int) -> float:
    """utime+stime of the whole process (every thread), in clock ticks' resolution."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def cpu_ns(pid: int) -> int:
    """CPU time run by the process's live threads, in nanoseconds (first field of each task's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


# ------------------------------------------------------------------------------------------------ documents


def notification(n: int, users: int, due_at: float, now: float, claim: Claim | None = None) -> dict:
    raw = {"id": f"r{n}", "app": APP, "target": {"users": [f"u{n % users}"]}, "message": {"title": "t", "body": "b"}}
    request = parse_request(raw, KNOWN_APPS)
    return new_document(request, raw, "kafka", due_at, now, claim, lane=lane_for(request))


def final_fields(token: str, now: float) -> dict[str, Any]:
    """What a finish writes (store/leases.py LeaseStore._final_fields, with the counts of one delivery)."""
    return {
        "state": "done", "error": None, "finished_at": now, "expire_at": datetime.now(UTC) + timedelta(days=30),
        "claim": None, "released_claim": token, "lease_owner": None, "lease_until": 0.0, "chunk_done": None,
        "event_pending": True, "counts": full_counts({"targeted": 1, "delivered": 1}),
    }


def finished(doc: dict, now: float, event_pending: bool = False) -> dict:
    doc.update(final_fields("seed/0", now), event_pending=event_pending)
    return doc


def seed(db: Any, devices: int, notifications: int) -> None:
    now = time.time()
    db.devices.drop()
    db.notifications.drop()
    batch: list[dict] = []
    for i in range(devices):
        ios = i % 2 == 0
        plat = "ios" if ios else "android"
        token = f"{i:064x}" if ios else f"fcm{i:08d}:APA91b" + "x" * 140
        batch.append({"app": APP, "token": token, "platform": plat, "kind": "apns" if ios else "fcm",
                      "user_id": f"u{i}", "tags": ["all", plat, f"g{i // 100}"],
                      "locale": "en-US", "timezone": "UTC", "app_version": "1.0", "opt_out": [],
                      "active": True, "deactivated_reason": None, "deactivated_at": None,
                      "created_at": now, "updated_at": now, "registered_at": now})
        if len(batch) == 5000:
            db.devices.insert_many(batch, ordered=False)
            batch = []
    if batch:
        db.devices.insert_many(batch, ordered=False)
    db.devices.create_indexes(DEVICE_INDEXES)
    db.notifications.create_indexes(NOTIFICATION_INDEXES)
    add_notifications(db, 0, notifications, devices, now)


def add_notifications(db: Any, first: int, count: int, users: int, now: float) -> None:
    """Notifications r<first>.. : even ones done (event published), odd ones scheduled an hour ahead."""
    for start in range(first, first + count, 5000):
        docs = [finished(notification(n, users, now, now), now) if n % 2 == 0
                else notification(n, users, now + 3600, now)
                for n in range(start, min(start + 5000, first + count))]
        db.notifications.insert_many(docs, ordered=False)


# ------------------------------------------------------------------------------------------------ timing


class Figure(NamedTuple):
    wall_ms: float  # median per batch
    cpu_ms: float  # median nx-27017 CPU per batch (schedstat)
    stat_cpu_ms: float  # mean nx-27017 CPU per batch (utime+stime)


class Operation(NamedTuple):
    name: str
    setup: Callable[[int], Any]  # N -> state (not timed)
    run: Callable[[Any], object]  # timed
    teardown: Callable[[Any], object]  # not timed


def timed(pid: int, op: Operation, n: int, repeat: int) -> Figure:
    walls, cpus = [], []
    stat_total = 0.0
    for i in range(repeat + 1):
        state = op.setup(n)
        stat0, cpu0, wall0 = cpu_seconds(pid), cpu_ns(pid), time.perf_counter()
        op.run(state)
        wall1, cpu1, stat1 = time.perf_counter(), cpu_ns(pid), cpu_seconds(pid)
        op.teardown(state)
        if i:  # the first is a warm-up
            walls.append((wall1 - wall0) * 1000)
            cpus.append((cpu1 - cpu0) / 1e6)
            stat_total += stat1 - stat0
    return Figure(statistics.median(walls), statistics.median(cpus), stat_total * 1000 / repeat)


def operations(db: Any, users: int) -> dict[str, Operation]:
    devices, notes = db.devices, db.notifications
    device_query = {"app": {"$eq": APP}, "active": True, "kind": {"$ne": "apns_voip"}}
    rng = random.Random(7)

    def ids_of(docs: Sequence[dict]) -> list[str]:
        return [d["_id"] for d in docs]

    def remove(ids: Sequence[str]) -> None:
        if ids:
            notes.delete_many({"_id": {"$in": list(ids)}})

    def fresh(n: int, claim: Claim | None = None, due_in: float = 0.0) -> list[dict]:
        now = time.time()
        return [notification(next(_fresh), users, now + due_in, now, claim) for _ in range(n)]

    def held(n: int) -> tuple[str, list[str]]:
        """N notifications recorded held by a fresh lease (dispatching, claim = token), as direct dispatch
        records them (the same fields a claim's update_many sets)."""
        token = f"bench/{next(_fresh)}"
        docs = fresh(n, Claim(token, "bench", time.time() + 30))
        notes.insert_many(docs, ordered=False)
        return token, ids_of(docs)

    def announced(n: int) -> tuple[str, list[str]]:
        """N finished notifications whose outcome event is still pending."""
        now = time.time()
        docs = [finished(d, now, event_pending=True) for d in fresh(n)]
        notes.insert_many(docs, ordered=False)
        return "", ids_of(docs)

    def accepted(n: int) -> tuple[str, list[str]]:
        """N accepted notifications of the batch lane, due a second ago, lease expired: claim candidates."""
        docs = fresh(n, due_in=-1.0)
        if docs:
            notes.insert_many(docs, ordered=False)
        return "", ids_of(docs)

    def some_users(n: int) -> list[str]:
        return [f"u{u}" for u in rng.sample(range(users), n)]

    def finish(state: tuple[str, list[str]]) -> object:
        token, ids = state
        final = final_fields(token, time.time())
        return notes.bulk_write([UpdateOne({"_id": i, "claim": {"$eq": token}, "state": {"$eq": "dispatching"}},
                                           {"$set": final}) for i in ids], ordered=False)

    def candidates(_: object) -> list[dict]:
        now = time.time()
        return list(notes.find({"lane": {"$eq": "batch"}, "state": {"$eq": "accepted"}, "due_at": {"$lte": now},
                                "lease_until": {"$lte": now}}).sort("due_at", 1).limit(500).batch_size(500))

    def drop_state(state: tuple[str, list[str]]) -> None:
        remove(state[1])

    def nothing(_: object) -> None:
        return None

    inserted: list[list[str]] = []

    def insert(docs: list[dict]) -> object:
        inserted.append(ids_of(docs))
        return notes.insert_many(docs, ordered=False)

    ops = [
        Operation("insert_many (ordered=False)", fresh, insert, lambda _: remove(inserted.pop())),
        Operation("devices: one $eq query per user", some_users,
                  lambda us: [list(devices.find({**device_query, "user_id": {"$eq": u}})) for u in us], nothing),
        Operation("devices: one $in query", some_users,
                  lambda us: list(devices.find({**device_query, "user_id": {"$in": us}})), nothing),
        Operation("finish: bulk_write of UpdateOne", held, finish, drop_state),
        Operation("finish: one update_many _id $in (alike)", held,
                  lambda s: notes.update_many({"_id": {"$in": s[1]}, "claim": {"$eq": s[0]},
                                               "state": {"$eq": "dispatching"}},
                                              {"$set": final_fields(s[0], time.time())}), drop_state),
        Operation("event_pending cleared: update_many _id $in", announced,
                  lambda s: notes.update_many({"_id": {"$in": s[1]}, "event_pending": True},
                                              {"$set": {"event_pending": False}}), drop_state),
        Operation("read-back: find _id $in + claim", held,
                  lambda s: list(notes.find({"_id": {"$in": s[1]}, "claim": {"$eq": s[0]}})), drop_state),
        Operation("renewal: update_many _id $in + claim", held,
                  lambda s: notes.update_many({"_id": {"$in": s[1]}, "claim": {"$eq": s[0]}},
                                              {"$set": {"lease_until": time.time() + 60}}), drop_state),
        Operation("claim candidates (N accepted due)", accepted, candidates, drop_state),
        # References for the scan question.
        Operation("ref: find _id $eq, one by one", held,
                  lambda s: [list(notes.find({"_id": {"$eq": i}, "claim": {"$eq": s[0]}})) for i in s[1]],
                  drop_state),
        Operation("ref: find_one of a missing _id (N times)", lambda n: n,
                  lambda n: [notes.find_one({"_id": {"$eq": f"{APP}:missing"}}) for _ in range(n)], nothing),
        Operation("ref: find request_id $in (no index)", held,
                  lambda s: list(notes.find({"request_id": {"$in": [i.split(":", 1)[1] for i in s[1]]}})),
                  drop_state),
    ]
    return {op.name: op for op in ops}


# ------------------------------------------------------------------------------------------------ report


def server_identity(client: Any) -> None:
    for command in ("buildInfo", "hello"):
        reply = client.admin.command(command)
        print(f"{command} reply, {len(reply)} fields: {', '.join(reply)}")
        for key, value in reply.items():
            text = repr(value)
            print(f"  {key:<30} {text if len(text) <= 90 else text[:87] + '...'}")
        missing = [k for k in ("version", "gitVersion", "versionArray", "process") if k not in reply]
        if missing:
            print(f"  (no {', '.join(missing)})")
    print()


HEADER = (f"{'operation':<44} {'N':>4} {'wall ms':>9} {'wall ms/item':>12} {'nx CPU ms':>10} "
          f"{'nx CPU ms/item':>14} {'stat CPU ms':>11}")


def row(name: str, n: int, fig: Figure) -> str:
    per = max(n, 1)
    return (f"{name:<44} {n:>4} {fig.wall_ms:9.2f} {fig.wall_ms / per:12.3f} {fig.cpu_ms:10.2f} "
            f"{fig.cpu_ms / per:14.3f} {fig.stat_cpu_ms:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--notifications", type=int, default=20_000)
    parser.add_argument("--sizes", default="1,10,50,200,500")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--grow", type=int, default=40_000, help="notifications added for the scan check (0: none)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        server = nx27017(Path(work)).start()
        pid = server.process.pid
        try:
            client = MongoClient(f"mongodb://127.0.0.1:{server.port}")
            server_identity(client)
            db = client["opcost"]
            started = time.monotonic()
            seed(db, args.devices, args.notifications)
            print(f"seeded {args.devices} devices, {args.notifications} notifications in "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr)
            ops = operations(db, args.devices)
            main_ops = [op for name, op in ops.items() if not name.startswith("ref:")]
            print(f"{args.devices} devices, {args.notifications} notifications, median of {args.repeat}; "
                  "item = notification (user for the device lookups)")
            print(HEADER)
            lookups: dict[tuple[str, int], Figure] = {}
            for op in main_ops:
                for n in ([0, *sizes] if op.name.startswith("claim") else sizes):
                    fig = timed(pid, op, n, args.repeat)
                    lookups[(op.name, n)] = fig
                    print(row(op.name, n, fig), flush=True)
            print()
            each, one = "devices: one $eq query per user", "devices: one $in query"
            for n in sizes:
                a, b = lookups[(each, n)], lookups[(one, n)]
                print(f"N={n:<4} nx CPU: {n} $eq queries {a.cpu_ms:8.2f} ms, one $in {b.cpu_ms:8.2f} ms "
                      f"-> break-even at ~{b.cpu_ms / (a.cpu_ms / n):.0f} users; wall {a.wall_ms:8.2f} vs "
                      f"{b.wall_ms:8.2f} ms")
            if args.grow:
                probe = ["read-back: find _id $in + claim", "renewal: update_many _id $in + claim",
                         "event_pending cleared: update_many _id $in", "finish: bulk_write of UpdateOne",
                         "ref: find _id $eq, one by one", "ref: find_one of a missing _id (N times)",
                         "ref: find request_id $in (no index)",
                         "claim candidates (N accepted due)"]
                before = {(name, n): timed(pid, ops[name], n, args.repeat) for name in probe for n in (1, 10)}
                total = db.notifications.estimated_document_count()
                started = time.monotonic()
                add_notifications(db, args.notifications, args.grow, args.devices, time.time())
                print(f"\nadded {args.grow} notifications in {time.monotonic() - started:.0f} s", file=sys.stderr)
                grown = db.notifications.estimated_document_count()
                print(f"\nscan check: nx CPU ms per batch with {total} and with {grown} notifications")
                print(f"{'operation':<44} {'N':>4} {f'at {total}':>10} {f'at {grown}':>10} {'ratio':>6}")
                for name in probe:
                    for n in (1, 10):
                        after = timed(pid, ops[name], n, args.repeat)
                        first = before[(name, n)]
                        print(f"{name:<44} {n:>4} {first.cpu_ms:10.2f} {after.cpu_ms:10.2f} "
                              f"{after.cpu_ms / max(first.cpu_ms, 1e-3):6.2f}", flush=True)
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
