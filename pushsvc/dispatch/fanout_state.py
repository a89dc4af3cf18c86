"""What one fan-out run carries from chunk to chunk: where it stands (`Run`: the cursor, the devices of its chunk
already answered, the number of its next progress write); how fast it may go is dispatch/pace.py."""

from __future__ import annotations

from typing import Any

from pushsvc.model import PushRequest
from pushsvc.scheduling.best_time import BestTime
from pushsvc.scheduling.lease import Lease
from pushsvc.store.audience import resume_point
from pushsvc.store.ranges import RANGE_KIND
from pushsvc.store.records import NotificationRecord


def best_time_of(record: NotificationRecord, request: PushRequest) -> BestTime | None:
    """The waves of a best-time campaign, from its `schedule.best_time` and `schedule.at` (required with it).
    Never from the due time: each wave moves that on."""
    at = request.options.send_at
    if not record.best_time or at is None:
        return None
    return BestTime(at.timestamp(), int(record.best_time["window_hours"]))


class Run:
    """Where one run of a notification stands: the saved cursor, the devices of its chunk already answered
    (from a run stopped mid-chunk), and the progress number of its next write. Starts where its `record`,
    as claimed, says the last run left it."""

    def __init__(self, record: NotificationRecord, request: PushRequest, lease: Lease) -> None:
        self.record = record
        self.id = record.id
        self.request = request
        self.lease = lease
        self.seq = record.progress_seq
        self.skip: frozenset[str] = record.chunk_done
        # A range reads its slice of the audience: tokens after bounds[0], up to bounds[1] (store/ranges.py).
        self.after, self.upto = record.bounds
        self.cursor: object = self._start(record.cursor)
        # Counting its devices expired instead of sending them (NotificationRunner decides when a wave, or the
        # notification, begins; a resumed run goes on as its record says).
        self.lapsed = record.ttl_lapsed
        # A best-time campaign's waves (scheduling/best_time.py); None for any other.
        self.best = best_time_of(record, request)

    @property
    def beginning(self) -> bool:
        """Nothing of this due time (the notification, its range or its wave) was sent before: no saved cursor,
        no devices of a stopped chunk."""
        return self.record.cursor is None and not self.skip

    def restart(self) -> None:
        """From the start of the audience, nothing of it answered (a new local-time wave)."""
        self.skip = frozenset()
        self.cursor = self._start(None)

    def _start(self, saved: Any) -> Any:
        """Where reading starts: explicit tokens are paged by position (None: 0), audiences by a cursor
        (store/devices.py `resume_point`)."""
        if self.request.target.tokens:
            return saved
        if self.record.kind == RANGE_KIND:
            return saved if saved is not None else {"token": self.after or ""}
        return resume_point(saved, self.skip)
