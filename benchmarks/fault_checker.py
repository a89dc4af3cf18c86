"""The long run of the independent fault checker (tests/reliability/checker.py): many seeds, many requests.

Each seed starts its own nx-27017 and Tansu behind fault proxies, two `pushsvc serve` replicas (the second
with its clock 45 s ahead), and the TLS APNs/FCM peers; publishes the requests with poison mixed in while
connection faults and kill -9 hit; then counts from the peers and MongoDB. Prints one line per seed and the
totals; exits 1 if any seed broke a guarantee.

    python benchmarks/fault_checker.py [--seeds 20] [--first-seed 1] [--requests 10000] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.tls import make_test_pki
from tests.integration.stack import APNS_KEY_ID, APNS_TEAM_ID
from tests.reliability.checker import CheckPlan, run_check


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--faults", type=int, default=30)
    parser.add_argument("--skew", default="+45s", help="clock offset of the second replica ('' for none)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-checker-"))
    pki = make_test_pki(work / "pki")
    os.environ["SSL_CERT_FILE"] = str(pki.bundle_file)
    os.environ["REQUESTS_CA_BUNDLE"] = str(pki.bundle_file)
    totals = {"requests": 0, "poison": 0, "lost": 0, "missing_devices": 0, "duplicate_sends": 0,
              "duplicate_requests": 0, "unexplained": 0, "count_mismatches": 0, "dlq_wrong": 0,
              "missing_events": 0, "kills": 0, "faults": 0}
    failed: list[int] = []
    started = time.monotonic()
    async with ApnsPeer(pki, auth="token", key_id=APNS_KEY_ID, team_id=APNS_TEAM_ID) as apns, FcmPeer(pki) as fcm:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            plan = CheckPlan(
                seed=seed, requests=args.requests, rate=args.rate, kills=args.kills, faults=args.faults,
                skew=args.skew or None, finish_timeout=1800.0,
            )
            report = await run_check(plan, work / f"seed-{seed}", pki, apns, fcm,
                                     log=print if args.verbose else lambda line: None)
            print(report.details() if not report.ok or args.verbose else report.summary(), flush=True)
            totals["requests"] += report.published
            totals["poison"] += report.poison
            totals["lost"] += report.published - report.recorded + len(report.unfinished)
            totals["missing_devices"] += sum(report.missing_devices.values())
            totals["duplicate_sends"] += sum(report.duplicates.values())
            totals["duplicate_requests"] += len(report.duplicates)
            totals["unexplained"] += len(report.duplicates_unexplained)
            totals["count_mismatches"] += len(report.count_mismatches)
            totals["dlq_wrong"] += len(report.dlq_missing) + len(report.dlq_unexpected) + len(report.poison_recorded)
            totals["missing_events"] += len(report.missing_events)
            totals["kills"] += len(report.kills)
            totals["faults"] += report.faults.count("injected")
            if not report.ok:
                failed.append(seed)
    figures = " ".join(f"{k}={v}" for k, v in totals.items())
    print(f"\n{args.seeds} seeds in {time.monotonic() - started:.0f}s: {figures}")
    print(f"result: {'PASS' if not failed else f'FAIL (seeds {failed})'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
