"""Which lane a request takes, decided when it is recorded (the names: store/notifications.py, the lane field),
and how much of each lane a replica runs now (`LaneRoom`).

"batch": a few tokens or users, sent now, run many at a time (dispatch/batch.py). "fanout": segments, long
lists, local-time waves and campaigns, run chunk by chunk (dispatch/fanout.py). Claimed separately, so busy or
retrying campaigns never hold up the batch lane and a burst of batch-lane pushes never starves a campaign.
"""

from __future__ import annotations

from pushsvc import metrics
from pushsvc.model import PushRequest
from pushsvc.store.devices import SMALL_LOOKUP
from pushsvc.store.notifications import LANE_BATCH, LANE_FANOUT
from pushsvc.store.ranges import LANE_RANGE


def lane_for(request: PushRequest) -> str:
    target = request.target
    few = (bool(target.tokens) and len(target.tokens) <= SMALL_LOOKUP) or (
        bool(target.users) and len(target.users) <= SMALL_LOOKUP
    )
    return LANE_BATCH if few and not request.options.local_time else LANE_FANOUT


class LaneRoom:
    """What a replica runs now in each lane, each lane's room taken against its own limit, shown as the gauge
    `pushsvc_active_notifications{lane}`: notifications inside running batches (and those intake reserved),
    runs of the fan-out runner, ranges of split campaigns."""

    def __init__(self) -> None:
        self._taken = {LANE_BATCH: 0, LANE_FANOUT: 0, LANE_RANGE: 0}
        for lane in self._taken:
            self.change(lane, 0)  # every lane's series exists, at zero, before the first scrape

    def taken(self, lane: str) -> int:
        return self._taken[lane]

    def change(self, lane: str, by: int) -> None:
        self._taken[lane] += by
        metrics.child(metrics.ACTIVE_NOTIFICATIONS, lane).set(self._taken[lane])

    @staticmethod
    def runner_lane(lane: str) -> str:
        """Whose room a fan-out run takes: a range's, or the fan-out lane's (also for a notification of the
        batch lane the batch runner cannot run: a started fan-out, a stored request no longer readable)."""
        return LANE_RANGE if lane == LANE_RANGE else LANE_FANOUT
