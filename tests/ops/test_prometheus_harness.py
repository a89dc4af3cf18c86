"""Self-test of the Prometheus harness: a real Prometheus scrapes itself and loads pushsvc's alert rules.

It also asks that live Prometheus to parse every dashboard query, so a query that promtool's offline
check accepts but the server rejects would show up here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ops.prometheus_harness import PrometheusError, PrometheusHarness, prometheus_binary
from tests.ops.test_manifests import dashboard_queries

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config/prometheus/alerts.yaml"
DASHBOARD = ROOT / "config/grafana/pushsvc.json"

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None, reason="prometheus binary missing: apt-get install prometheus"
)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    with PrometheusHarness(tmp_path_factory.mktemp("prometheus"), scrape_self=True, rule_files=[ALERTS]) as prom:
        yield prom


def test_scrapes_itself(prometheus: PrometheusHarness) -> None:
    rows = prometheus.wait_for('up{job="prometheus"} == 1', timeout=30)
    assert rows[0]["metric"]["instance"] == f"127.0.0.1:{prometheus.port}"
    targets = prometheus.active_targets()
    assert [t["health"] for t in targets] == ["up"]
    # A scraped metric of Prometheus itself is queryable.
    prometheus.wait_for('prometheus_build_info{job="prometheus"}', timeout=10)


def test_loads_the_alert_rules(prometheus: PrometheusHarness) -> None:
    groups = prometheus.rule_groups()
    assert [g["name"] for g in groups] == ["pushsvc", "pushsvc-slo"]
    rules = groups[0]["rules"]
    assert {r["name"] for r in rules} >= {
        "PushsvcHighFailureRatio",
        "PushsvcKafkaLagGrowing",
        "PushsvcProviderAuthErrors",
        "PushsvcNoDeliveriesWithBacklog",
        "PushsvcDLQRising",
        "PushsvcProviderLatencyHigh",
        "PushsvcDown",
    }
    # Once evaluated, every rule is healthy; with no pushsvc target, only PushsvcDown can be pending.
    prometheus.wait_for("ALERTS", timeout=20)
    for group in prometheus.rule_groups():
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown"), rule
    pending = {row["metric"]["alertname"] for row in prometheus.query("ALERTS")}
    assert pending == {"PushsvcDown"}


def test_server_parses_every_dashboard_query(prometheus: PrometheusHarness) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for where, expr in dashboard_queries(dashboard):
        prometheus.query(expr)  # raises on a parse error
        assert where


def test_query_error_is_reported(prometheus: PrometheusHarness) -> None:
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum(")
