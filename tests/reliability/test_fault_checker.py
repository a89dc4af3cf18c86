"""The independent fault checker, short: 800 requests with poison mixed in, connection faults on MongoDB and
the broker, two kills, a second replica 45 s ahead. The long run (10k requests x 20 seeds) is
benchmarks/fault_checker.py; see tests/reliability/checker.py for what is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.tls import TestPki as Pki
from tests.reliability.checker import CheckPlan, run_check

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", [11])
async def test_nothing_lost_nothing_unexplained_twice_under_faults_kills_skew_and_poison(
    tmp_path: Path, pki: Pki, apns_peer: ApnsPeer, fcm_peer: FcmPeer, seed: int
) -> None:
    report = await run_check(CheckPlan(seed=seed), tmp_path, pki, apns_peer, fcm_peer, log=print)
    print(report.details())
    assert report.ok, report.details()
    assert report.published == 800 and report.poison == 16
