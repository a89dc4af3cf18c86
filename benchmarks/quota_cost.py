"""What the shared FCM quota limiter (dispatch/quota.py) costs per delivery: the sender with and without it.

    python benchmarks/quota_cost.py [--deliveries 20000] [--latency-ms 5] [--concurrency 200] [--rounds 3]

Starts its own nx-27017 and runs `--deliveries` deliveries through `DeliverySender.deliver` (all at once, as a
chunk does, bounded by `--concurrency`) to a provider that answers every request DELIVERED after
`--latency-ms` (in process, no network: what is left is the sender's own work and the limiter's). "off": no
limit configured (the gate only checks for a hold); "on": a limit far above the rate (600 million a minute) so
that nothing waits and only the permits' cost shows: blocks of permits taken from MongoDB (store/quotas.py)
with one `find_one_and_update` each. The two alternate `--rounds` times. Per run it prints the wall time, this
process's CPU and nx-27017's CPU per delivery (microseconds), the blocks taken and the permits per block.
Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc import metrics
from pushsvc.config import DispatchSettings, MongoSettings
from pushsvc.dev.servers import nx27017
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.model import Message, Options, Outcome, Recipient
from pushsvc.providers.base import Delivery, Provider, ProviderQuota, Rendered, SendResult
from pushsvc.store.database import Database
from pushsvc.store.quotas import QuotaStore

SCOPE = "fcm:bench-project"


def cpu_ns(pid: int) -> int:
    """CPU time run by the process's live threads, in nanoseconds (first field of each task's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


class AnsweringProvider(Provider):
    """Answers DELIVERED after a fixed latency: the provider side costs (nearly) nothing."""

    name = "fcm"

    def __init__(self, latency: float, limit: int | None) -> None:
        super().__init__("bench")
        self._latency = latency
        self.quota = ProviderQuota(SCOPE, limit, 60.0, 60.0, frozenset({"QUOTA_EXCEEDED"}))

    async def send(self, delivery: Delivery) -> SendResult:
        await asyncio.sleep(self._latency)
        return SendResult(Outcome.DELIVERED, status=200)

    def render(self, delivery: Delivery) -> Rendered:
        return Rendered({}, {})


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"scope": SCOPE}) or 0.0


async def run(label: str, limit: int | None, args: argparse.Namespace, store: QuotaStore, server_pid: int) -> None:
    settings = DispatchSettings(concurrency_per_provider=args.concurrency)
    provider = AnsweringProvider(args.latency_ms / 1000, limit)
    sender = DeliverySender({("bench", "fcm"): provider}, settings, quota_counter=store)
    message, options = Message(title="t", body="b"), Options()
    deliveries = [
        Delivery("n", Recipient(app="bench", token=f"t{i}", platform="android", kind="fcm"), message, options)
        for i in range(args.deliveries)
    ]
    blocks, permits = sample("pushsvc_provider_quota_blocks_total"), sample("pushsvc_provider_quota_permits_total")
    server_before, cpu_before, started = cpu_ns(server_pid), time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(sender.deliver(d, 0.0) for d in deliveries))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    server = (cpu_ns(server_pid) - server_before) / 1e9
    assert all(r.outcome == "delivered" for r in results), {r.outcome for r in results}
    blocks = sample("pushsvc_provider_quota_blocks_total") - blocks
    permits = sample("pushsvc_provider_quota_permits_total") - permits
    n = args.deliveries
    print(
        f"{label:4}  wall {wall / n * 1e6:7.1f} us/delivery  pushsvc CPU {cpu / n * 1e6:7.1f} us/delivery  "
        f"nx-27017 CPU {server / n * 1e6:6.1f} us/delivery  blocks {blocks:6.0f}  "
        f"permits/block {permits / blocks if blocks else 0:6.1f}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        server = nx27017(Path(work)).start()
        try:
            assert server.process is not None
            database = Database.connect(MongoSettings(uri=f"mongodb://127.0.0.1:{server.port}", database="bench"))
            await database.ensure_indexes()
            store = QuotaStore(database)
            await store.take(SCOPE, 0, 0.0, 1, 60.0)  # connection opened before anything is timed
            print(f"{args.deliveries} deliveries, provider latency {args.latency_ms} ms, concurrency "
                  f"{args.concurrency}; off: no limiter, on: the shared limiter (never waiting)")
            for _ in range(args.rounds):
                await run("off", None, args, store, server.process.pid)
                await run("on", 600_000_000, args, store, server.process.pid)
            await database.close()
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
