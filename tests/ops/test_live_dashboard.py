"""Every dashboard panel shows data: a real Prometheus scrapes a running pushsvc under a short, varied load.

pushsvc runs in-process (the ``stack`` fixture: real Tansu, nx-27017 and TLS APNs/FCM peers); the Debian
``prometheus`` binary scrapes its /metrics every second as job="pushsvc". The load covers the paths the
panels watch: deliveries on all four providers (APNs, FCM, Huawei Push Kit, Web Push: the same labels), an
invalid token (410), a retried send (503 once), a dead letter, a duplicate request, an unknown token, a
notification scheduled for later, a campaign, a dry run and receipts (an open, a receipt, a repeat, one for an
unknown notification). Prometheus loads config/prometheus/alerts.yaml, whose recording rules the SLO row reads
(transactional pushes feed the latency SLI, the campaign the campaign-start SLI). Then each panel target of
config/grafana/pushsvc.json is evaluated through Prometheus' HTTP API with the dashboard variables filled in as
Grafana would ("All" and an explicit selection), and must return data; every rule must evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pushsvc import metrics
from pushsvc.simulators.webpush import VapidKey, WebPushPeer
from tests.integration.stack import Stack, auth_headers
from tests.ops.prometheus_harness import PrometheusHarness, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config/grafana/pushsvc.json"
RULES = ROOT / "config/prometheus/alerts.yaml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus binary missing: apt-get install prometheus"),
]

IOS_OK = "d1" * 32
IOS_OK_2 = "d2" * 32
IOS_GONE = "d3" * 32
IOS_RETRY = "d4" * 32
IOS_UNKNOWN = "d5" * 32
ANDROID_OK = "fcm:" + "p" * 60
ANDROID_OK_2 = "fcm:" + "q" * 60
IOS_PROMO = "d6" * 32
ANDROID_PROMO = "fcm:" + "r" * 60
HUAWEI_OK = "hms-" + "h" * 60

# Grafana's values for the dashboard variables. "All" uses the variables' allValue (".*"); a multi-value
# selection is rendered as a regex alternation for =~ matchers. Intervals as Grafana would pick them for
# a 1s scrape interval and a short time range.
ALL = {"app": ".*", "provider": ".*"}
SELECTED = {"app": "demo", "provider": "(apns|fcm|hms|webpush)"}
INTERVALS = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}


def panel_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, raw expression) for every target, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]


def fill(expr: str, variables: dict[str, str]) -> str:
    values = {**INTERVALS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def finite(rows: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(r["value"][1]) for r in rows) if math.isfinite(v)]


def local_value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def request(request_id: str, target: dict, **extra: Any) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "Hi", "body": "there"}, **extra}


async def test_every_dashboard_panel_returns_data(
    stack: Stack, tmp_path: Path, newer_providers: dict, web_peer: WebPushPeer, vapid: VapidKey
) -> None:
    started = time.monotonic()
    service = await stack.start(providers=newer_providers)
    prom = PrometheusHarness(
        tmp_path / "prometheus", targets=[f"127.0.0.1:{service.port}"], job="pushsvc", rule_files=[RULES]
    )
    # The harness blocks (subprocess, urllib): run it off the event loop, which serves the scrapes.
    await asyncio.to_thread(prom.start)
    try:

        async def query(expr: str) -> list[dict[str, Any]]:
            return await asyncio.to_thread(prom.query, expr)

        async def wait_for(expr: str, check: Any = bool, timeout: float = 20.0) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout
            while True:
                rows = await query(expr)
                if check(rows):
                    return rows
                assert time.monotonic() < deadline, f"timed out waiting for {expr!r}; last {rows!r}"
                await asyncio.sleep(0.5)

        # A first scrape before any load: the zero-initialised series make every increment visible.
        await wait_for('up{job="pushsvc"} == 1')
        await wait_for('pushsvc_provider_paused{job="pushsvc", app="demo", provider="apns"} == 0')

        # The registry is this process's: other tests may have counted before.
        starts_before = local_value("pushsvc_fanout_start_delay_seconds_count", app="demo")
        await stack.register(IOS_OK, "ios")
        await stack.register(IOS_OK_2, "ios", user_id="alice")
        await stack.register(IOS_GONE, "ios")
        await stack.register(IOS_RETRY, "ios")
        await stack.register(ANDROID_OK, "android")
        await stack.register(ANDROID_OK_2, "android", user_id="alice")
        await stack.register(HUAWEI_OK, "huawei", user_id="alice")
        browser = web_peer.subscribe(application_server_key=vapid.public_key)
        await stack.register("", "web", user_id="alice", subscription=browser.as_json())
        await stack.register(IOS_PROMO, "ios", tags=["promo"])
        await stack.register(ANDROID_PROMO, "android", tags=["promo"])
        stack.apns.script(IOS_GONE, status=410, reason="Unregistered")
        stack.apns.script(IOS_RETRY, status=503, reason="ServiceUnavailable", times=1)
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        tokens = request("live-tokens", {"tokens": [IOS_OK, ANDROID_OK, IOS_GONE, IOS_RETRY, IOS_UNKNOWN]})
        await stack.publish(
            tokens,
            request("live-users", {"users": ["alice"]}),
            b"{not json",
            request("live-later", {"users": ["alice"]}, options={"send_at": later}),
            tokens,  # a producer retry: absorbed as a duplicate
            request("live-dry", {"users": ["alice"]}, options={"dry_run": True}),
        )

        # A campaign: pushsvc_campaign_progress_ratio{campaign} exists once one has run on this replica.
        campaign = {
            "id": "live-campaign",
            "name": "Live dashboard",
            "app": "demo",
            "audience": {"segment": {"tags_any": ["promo"]}},
            "message": {"title": "Sale", "body": "now"},
        }
        async with stack.http.post(stack.url("/v1/campaigns"), json=campaign, headers=auth_headers()) as response:
            assert response.status == 201, await response.text()

        done = await stack.wait_finished("live-tokens")
        assert {k: done["counts"][k] for k in ("targeted", "delivered", "invalid_token", "unknown_token")} == {
            "targeted": 5,
            "delivered": 3,
            "invalid_token": 1,
            "unknown_token": 1,
        }
        assert (await stack.wait_finished("live-users"))["counts"]["delivered"] == 4
        assert (await stack.wait_finished("live-dry"))["counts"]["validated"] == 4
        assert len(stack.apns.requests_for(IOS_RETRY)) == 2, "the 503 was retried once"
        assert (await stack.wait_finished("campaign:live-campaign"))["counts"]["delivered"] == 2

        # Receipts from the app's backend (the Opens row): an open, a receipt, a repeat, an unknown notification.
        now = datetime.now(UTC).isoformat()
        receipts = {"app": "demo", "receipts": [
            {"notification_id": "live-tokens", "token": IOS_OK, "event": "opened", "at": now},
            {"notification_id": "live-tokens", "token": ANDROID_OK, "event": "received", "at": now},
            {"notification_id": "live-tokens", "token": IOS_OK, "event": "opened", "at": now},
            {"notification_id": "never-sent", "token": IOS_OK, "event": "opened", "at": now},
        ]}
        async with stack.http.post(stack.url("/v1/receipts"), json=receipts, headers=auth_headers()) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["results"] == ["recorded", "recorded", "duplicate", "unknown_notification"]
        opened = local_value("pushsvc_receipts_total", app="demo", event="opened", outcome="recorded")
        await wait_for(
            'sum(pushsvc_receipts_total{job="pushsvc", app="demo", event="opened", outcome="recorded"})',
            lambda rows: rows and float(rows[0]["value"][1]) >= opened,
        )

        # Prometheus has scraped everything the load produced (the registry is this process's).
        expected = local_value("pushsvc_deliveries_total", app="demo", provider="apns", outcome="invalid_token")
        assert expected >= 1
        await wait_for(
            'sum(pushsvc_deliveries_total{job="pushsvc", app="demo", provider="apns", outcome="invalid_token"})',
            lambda rows: rows and float(rows[0]["value"][1]) >= expected,
        )
        # The backlog gauge is refreshed every few seconds from MongoDB.
        await wait_for('pushsvc_scheduled_backlog{job="pushsvc", due="future"} >= 1')
        # The SLO recording rules (evaluated every second here) have seen the campaign's start and the
        # transactional pushes' acknowledgements.
        await wait_for('app:pushsvc_sli_campaign_start_errors:ratio_rate5m{app="demo"} >= 0')
        await wait_for("pushsvc:sli_transactional_latency_errors:ratio_rate5m >= 0")

        dashboard = json.loads(DASHBOARD.read_text())
        targets = list(panel_targets(dashboard))
        assert len(targets) >= 20
        missing: list[str] = []
        for variables in (ALL, SELECTED):
            for title, ref, raw in targets:
                expr = fill(raw, variables)
                rows = await query(expr)  # raises on an expression the server rejects
                if not rows:
                    missing.append(f"{title} [{ref}] {variables}: no series for {expr}")
                elif not finite(rows):
                    missing.append(f"{title} [{ref}] {variables}: only NaN/Inf for {expr}: {rows}")
        assert not missing, "panels without data:\n" + "\n".join(missing)

        # The load is visible where an SRE would look for it, not just "some series".
        def by(rows: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
            return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in rows}

        rate = INTERVALS["__rate_interval"]
        rows = await query(f"sum by (provider, outcome) (rate(pushsvc_deliveries_total[{rate}]))")
        outcomes = by(rows, "provider", "outcome")
        assert outcomes[("apns", "delivered")] > 0
        assert outcomes[("fcm", "delivered")] > 0
        assert outcomes[("hms", "delivered")] > 0
        assert outcomes[("webpush", "delivered")] > 0
        rows = await query(f"sum by (provider, outcome) (rate(pushsvc_dry_run_outcomes_total[{rate}]))")
        assert set(by(rows, "provider", "outcome")) >= {(p, "validated") for p in ("apns", "fcm", "hms", "webpush")}
        assert outcomes[("apns", "invalid_token")] > 0
        assert outcomes[("none", "unknown_token")] > 0
        rows = await query(f"sum by (provider, reason) (rate(pushsvc_retries_total[{rate}]))")
        assert by(rows, "provider", "reason").get(("apns", "ServiceUnavailable"), 0) > 0
        rows = await query(f"sum by (reason) (rate(pushsvc_dlq_messages_total[{rate}]))")
        assert by(rows, "reason")[("invalid_json",)] > 0
        rows = await query(f"sum by (source, outcome) (rate(pushsvc_requests_ingested_total[{rate}]))")
        ingested = by(rows, "source", "outcome")
        assert ingested[("kafka", "accepted")] > 0
        assert ingested[("kafka", "duplicate")] > 0
        assert ingested[("kafka", "invalid")] > 0
        rows = await query(f"sum by (event, outcome) (rate(pushsvc_receipts_total[{rate}]))")
        receipts_seen = by(rows, "event", "outcome")
        assert receipts_seen[("opened", "recorded")] > 0 and receipts_seen[("opened", "duplicate")] > 0
        assert receipts_seen[("opened", "unknown_notification")] > 0
        rows = await query('pushsvc_campaign_progress_ratio{job="pushsvc"}')
        assert by(rows, "campaign")[("live-campaign",)] == 1.0
        rows = await query('pushsvc_scheduled_backlog{job="pushsvc"}')
        assert by(rows, "due")[("future",)] >= 1

        # The SLIs measure this load: the transactional pushes (live-tokens, live-users: the batch lane) and only
        # they are in the latency SLI; the campaign started once; nothing failed.
        window = INTERVALS["__range"]
        rows = await query(f"sum by (lane) (increase(pushsvc_end_to_end_latency_seconds_count[{window}]))")
        acked = by(rows, "lane")
        assert acked[("batch",)] >= 7, acked  # 3 of live-tokens + 4 of live-users (Prometheus extrapolates up)
        assert acked[("fanout",)] >= 2, acked  # the campaign's two devices
        rows = await query('pushsvc_fanout_start_delay_seconds_count{job="pushsvc", app="demo"}')
        assert finite(rows) == [starts_before + 1], "one fan-out started: the campaign"
        for record in (
            'app:pushsvc_sli_delivery_errors:ratio_rate30d{app="demo"}',  # the 503 was retried, then delivered
            'app:pushsvc_sli_campaign_start_errors:ratio_rate30d{app="demo"}',  # started within seconds
        ):
            assert finite(await query(record)) == [0.0], record
        # Whether a retried push took over 1 s depends on its random backoff and this box's load: a ratio, not NaN.
        [late] = finite(await query("pushsvc:sli_transactional_latency_errors:ratio_rate30d"))
        assert 0 <= late <= 1
        rows = await query('pushsvc:slo_objective:ratio')
        assert by(rows, "sli") == {("delivery",): 0.995, ("transactional_latency",): 0.99, ("campaign_start",): 0.95}
        # Every rule evaluates (a matching error, e.g. many-to-many, shows only at evaluation), no alert fires.
        groups = await asyncio.to_thread(prom.rule_groups)
        assert {g["name"] for g in groups} == {"pushsvc", "pushsvc-slo"}
        unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not unhealthy, unhealthy
        firing = [r["name"] for g in groups for r in g["rules"] if r.get("state") == "firing" and "slo" in g["name"]]
        assert not firing, firing
    finally:
        await asyncio.to_thread(prom.stop)
    assert time.monotonic() - started < 60
