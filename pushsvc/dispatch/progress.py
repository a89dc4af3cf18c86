"""A notification's progress and its end: the share of a campaign's audience with a final outcome, its gauge,
and how a finished notification is told (metrics, log, outcome event) by whoever finishes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pushsvc import metrics
from pushsvc.logs import get_logger
from pushsvc.outcomes import Announcer, OutcomeEvent
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.store.campaigns import KIND as CAMPAIGN_KIND
from pushsvc.store.counts import FINAL_KEYS
from pushsvc.store.records import NotificationRecord

log = get_logger(__name__)


def progress_ratio(doc: Mapping[str, Any]) -> float:
    """Share of the audience with a final outcome (the audience estimate is counted at campaign creation).

    Of a document as a write returned it or with its ranges' counts summed (`RangeStore.live_counts`): the
    counts as they are now, not as the run's record read them."""
    counts = doc.get("counts") or {}
    finished = sum(int(counts.get(k, 0)) for k in FINAL_KEYS)
    total = max(int(doc.get("audience_estimate") or 0), int(counts.get("targeted", 0)), 1)
    return min(1.0, finished / total)


def campaign_progress(record: NotificationRecord) -> Any:
    """The progress gauge of the campaign `record` (its app and campaign id)."""
    return metrics.CAMPAIGN_PROGRESS.labels(record.app, record.request_id.removeprefix(CAMPAIGN_PREFIX))


async def announce_finished(
    announcer: Announcer,
    record: NotificationRecord,
    state: str,
    counts: Mapping[str, int],
    error: str | None,
    finished_at: float,
    **log_fields: object,
) -> None:
    """Tell that `record` finished, once: the finished counter, a campaign's gauge at 1, the log line and the
    outcome event (the fan-out runner's finish, and the settle of a campaign cut into ranges)."""
    if record.kind == CAMPAIGN_KIND:
        campaign_progress(record).set(1.0)
    metrics.NOTIFICATIONS_FINISHED.labels(record.app, state).inc()
    log.info("notification_finished", notification_id=record.id, app=record.app, state=state, counts=counts,
             **log_fields)
    await announcer.announce([OutcomeEvent.of(record, state, counts, error, finished_at)])
