"""How a fan-out run's notification ends, and who is told: finished under its lease (done, or failed: given up
when stalled, its stored request unreadable), or stopped between chunks by a pause or cancel from the API. A
range is not announced: its end may settle its campaign, which is announced once, with the sum of its ranges
(store/ranges.py)."""

from __future__ import annotations

from collections.abc import Callable

from pushsvc import metrics
from pushsvc.dispatch import traces
from pushsvc.dispatch.progress import announce_finished
from pushsvc.dispatch.ranges import RangeSettler
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState
from pushsvc.outcomes import Announcer, OutcomeEvent
from pushsvc.scheduling.lease import Lease, LeaseLost
from pushsvc.store.leases import LeaseStore
from pushsvc.store.notifications import PAUSED, NotificationStore
from pushsvc.store.ranges import RANGE_KIND
from pushsvc.store.records import NotificationRecord

log = get_logger(__name__)


class RunFinisher:
    def __init__(
        self,
        notifications: NotificationStore,
        leases: LeaseStore,
        announcer: Announcer,
        settler: RangeSettler,
        clock: Callable[[], float],
    ) -> None:
        self._notifications = notifications
        self._leases = leases
        self._announcer = announcer
        self._settler = settler
        self._clock = clock  # the scheduling clock: a notification's `finished_at`

    async def finish(
        self, record: NotificationRecord, lease: Lease, state: NotificationState, error: str | None
    ) -> None:
        """Write the final state under `lease` (LeaseLost if another replica holds it now), then tell it."""
        with traces.finishing(record, str(state)):  # the outcome event is published under it
            await self._finish(record, lease, state, error)

    async def _finish(
        self, record: NotificationRecord, lease: Lease, state: NotificationState, error: str | None
    ) -> None:
        notification_id, token, now = record.id, lease.token, self._clock()
        # A range is not announced: its parent is, once, with the sum of its ranges (store/ranges.py).
        announce = record.kind != RANGE_KIND
        counts = await lease.write(
            [notification_id],
            lambda: self._leases.finish(notification_id, token, state, error, now, announce=announce),
        )
        if counts is None:
            raise LeaseLost
        lease.drop([notification_id])
        if not announce:
            log.info("range_finished", notification_id=notification_id, state=str(state), counts=counts)
            await self._settle_parent(record)
            return
        await announce_finished(self._announcer, record, str(state), counts, error, now)

    async def stopped(self, record: NotificationRecord, state: str) -> None:
        """Tell a pause or cancel the run noticed between chunks, its lease already let go: the API wrote a
        cancel's end, and its outcome event is told here (a cancelled range's may settle its campaign)."""
        log.info("notification_interrupted", notification_id=record.id, state=state)
        if record.kind == RANGE_KIND:
            if state == str(NotificationState.CANCELLED):
                await self._settle_parent(record)  # this range's last counts are in: the campaign may be over
            return
        if state == str(NotificationState.CANCELLED):
            metrics.NOTIFICATIONS_FINISHED.labels(record.app, state).inc()
            # The counts and end the cancel left (read again: the run's record is from its claim).
            final = await self._notifications.get(record.id) or {}
            event = OutcomeEvent.of(record, state, final.get("counts", {}), None, float(final.get("finished_at") or 0))
            await self._announcer.announce([event])
        elif state != PAUSED:
            log.warning("notification_state_changed", notification_id=record.id, state=state)

    async def _settle_parent(self, range_record: NotificationRecord) -> None:
        """Settle the parent if this was its last range over; a failure is left to the outcome sweep's check."""
        parent_id = range_record.parent
        if parent_id is None:  # every range is created naming its parent (store/ranges.py)
            return
        try:
            await self._settler.settle(parent_id)
        except Exception as exc:
            log.warning("settle_failed", notification_id=parent_id, error=type(exc).__name__)
