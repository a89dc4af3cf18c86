"""Full-size crash run: kill -9 `pushsvc serve` at random moments during a 10k-request load, 10 times.

Starts its own Tansu broker, nx-27017 and TLS APNs/FCM peers, runs one pushsvc replica as a subprocess,
restarts it after each kill, then accounts for every request from MongoDB and the peers' records:
delivered / failed (+reason) / lost (must be 0) / duplicate sends (only notifications in flight at a kill).
Then a graceful pass (SIGTERM instead of kill -9, must have no duplicates).

    python benchmarks/chaos_crash.py [--requests 10000] [--kills 10] [--rate 400] [--skip-graceful]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.dev.servers import create_topics, nx27017, tansu
from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.tls import make_test_pki
from tests.integration.stack import APNS_KEY_ID, APNS_TEAM_ID, Stack
from tests.reliability.harness import crash_run

_n = itertools.count()


async def new_stack(work: Path, bootstrap: str, mongo_uri: str, pki, apns, fcm) -> Stack:
    n = next(_n)
    names = {
        "requests_topic": f"chaos.requests.{n}",
        "dlq_topic": f"chaos.dlq.{n}",
        "outcomes_topic": f"chaos.outcomes.{n}",
    }
    await create_topics(bootstrap, {names["requests_topic"]: 3, names["dlq_topic"]: 1, names["outcomes_topic"]: 1})
    tmp = work / f"run-{n}"
    tmp.mkdir()
    apns.reset()
    fcm.reset()
    sa = fcm.write_service_account(tmp / "fcm-sa.json")
    return Stack(tmp, bootstrap, mongo_uri, f"chaos{n}", {**names, "group_id": f"chaos-{n}"}, pki, apns, fcm, sa)


def show(title: str, report) -> None:
    acc = report.accounting
    print(f"\n== {title}")
    print(f"requests published      {acc.published}")
    print(f"delivered               {acc.delivered}")
    print(f"failed                  {acc.failed} {dict(acc.failure_reasons) or ''}")
    print(
        f"lost                    {len(acc.lost) + len(acc.unfinished) + len(acc.sent_without_delivery)}"
        f"  (no record {len(acc.lost)}, unfinished {len(acc.unfinished)}, "
        f"delivered-but-unseen {len(acc.sent_without_delivery)})"
    )
    print(f"duplicate sends         {sum(acc.duplicates.values())} over {len(acc.duplicates)} requests")
    print(
        f"  in a chunk in flight  {len(acc.duplicates) - len(report.duplicates_outside_in_flight)}"
        f" (in flight at kills: {len(report.in_flight_at_kills)})"
    )
    print(
        f"  outside (must be 0)   {len(report.duplicates_outside_in_flight)} "
        f"{sorted(report.duplicates_outside_in_flight)[:10]}"
    )
    for rid in sorted(acc.duplicates)[:20]:
        print(f"    dup {rid} x{acc.duplicates[rid] + 1}")
    print(f"log lines with secrets  {len(report.leaked)} {report.leaked[:3]}")
    missing = report.missing_outcome_events
    print(
        f"no outcome event        {len(missing)} (of which in flight at a kill: "
        f"{len(set(missing) & report.in_flight_at_kills)}) {missing[:5]}"
    )
    print(f"interruptions           {len(report.kills)}")
    for k in report.kills:
        print(
            f"  #{k['n']:>2} at {k['at']:>6.1f}s published={k['published_before']:>6} "
            f"finished={k['finished_before']:>6} dispatching={k['dispatching']} "
            f"restart_ready={k['restart_ready_s']}s"
        )
    print(
        f"runtime                 {report.runtime_seconds:.1f}s "
        f"(drain after load published: {report.drain_seconds:.1f}s)"
    )


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-graceful", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chaos-crash-"))
    pki = make_test_pki(work / "pki")
    os.environ["SSL_CERT_FILE"] = str(pki.bundle_file)
    os.environ["REQUESTS_CA_BUNDLE"] = str(pki.bundle_file)
    broker = tansu(work).start()
    mongo = nx27017(work).start()
    ok = True
    try:
        bootstrap, mongo_uri = f"127.0.0.1:{broker.port}", f"mongodb://127.0.0.1:{mongo.port}"
        async with ApnsPeer(pki, auth="token", key_id=APNS_KEY_ID, team_id=APNS_TEAM_ID) as apns, FcmPeer(pki) as fcm:
            # Kill moments spread over the expected run (~12 s per 1k requests on 2 cores with nx-27017).
            spread = max(2.0, args.requests / 1000 * 10 / max(1, args.kills))
            stack = await new_stack(work, bootstrap, mongo_uri, pki, apns, fcm)
            started = time.monotonic()
            report = await crash_run(
                stack,
                requests=args.requests,
                kills=args.kills,
                rate=args.rate,
                seed=args.seed,
                kill_window=(spread * 0.5, spread * 1.5),
                finish_timeout=1800,
                log=print,
            )
            show(f"kill -9 x{args.kills} during {args.requests} requests", report)
            acc = report.accounting
            ok &= not (acc.lost or acc.unfinished or acc.sent_without_delivery or report.duplicates_outside_in_flight)
            await stack.close()
            if not args.skip_graceful:
                stack = await new_stack(work, bootstrap, mongo_uri, pki, apns, fcm)
                n = max(1000, args.requests // 5)
                report = await crash_run(
                    stack,
                    requests=n,
                    kills=3,
                    rate=args.rate,
                    seed=args.seed + 1,
                    kill_window=(3.0, 6.0),
                    mode="term",
                    finish_timeout=900,
                    log=print,
                )
                show(f"SIGTERM x3 during {n} requests", report)
                acc = report.accounting
                ok &= not (acc.lost or acc.unfinished or acc.duplicates)
                await stack.close()
            print(f"\ntotal runtime {time.monotonic() - started:.1f}s; result: {'PASS' if ok else 'FAIL'}")
    finally:
        mongo.stop()
        broker.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
