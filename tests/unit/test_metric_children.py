"""metrics.child: the child `.labels()` gives, kept, so what a push counts through it is exported as before."""

from __future__ import annotations

from prometheus_client import generate_latest

from pushsvc import metrics


def test_a_kept_child_is_the_labelled_series_and_counts_in_the_exposition() -> None:
    first = metrics.child(metrics.DELIVERIES, "children-app", "fcm", "delivered")
    assert first is metrics.child(metrics.DELIVERIES, "children-app", "fcm", "delivered")
    assert first is metrics.DELIVERIES.labels("children-app", "fcm", "delivered")
    other = metrics.child(metrics.DELIVERIES, "children-app", "fcm", "rejected")
    assert other is not first
    first.inc(3)
    other.inc()
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'pushsvc_deliveries_total{app="children-app",outcome="delivered",provider="fcm"} 3.0' in text
    assert 'pushsvc_deliveries_total{app="children-app",outcome="rejected",provider="fcm"} 1.0' in text
    # Another metric with the same label values is its own series.
    assert metrics.child(metrics.DRY_RUN_OUTCOMES, "children-app", "fcm", "delivered") is not first
