"""A campaign's progress: the share of its audience with a final outcome, and its gauge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pushsvc import metrics
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.store.notifications import FINAL_KEYS, request_id_of


def progress_ratio(doc: Mapping[str, Any]) -> float:
    """Share of the audience with a final outcome (the audience estimate is counted at campaign creation)."""
    counts = doc.get("counts") or {}
    finished = sum(int(counts.get(k, 0)) for k in FINAL_KEYS)
    total = max(int(doc.get("audience_estimate") or 0), int(counts.get("targeted", 0)), 1)
    return min(1.0, finished / total)


def campaign_progress(doc: Mapping[str, Any]) -> Any:
    """The progress gauge of the campaign `doc` (its app and campaign id)."""
    return metrics.CAMPAIGN_PROGRESS.labels(doc["app"], request_id_of(doc).removeprefix(CAMPAIGN_PREFIX))
