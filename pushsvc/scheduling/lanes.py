"""Which lane a request takes, decided when it is recorded (the names: store/notifications.py, the lane field).

"batch": a few tokens or users, sent now, run many at a time (dispatch/batch.py). "fanout": segments, long
lists, local-time waves and campaigns, run chunk by chunk (dispatch/fanout.py). Claimed separately, so busy or
retrying campaigns never hold up the batch lane and a burst of batch-lane pushes never starves a campaign.
"""

from __future__ import annotations

from pushsvc.model import PushRequest
from pushsvc.store.devices import SMALL_LOOKUP
from pushsvc.store.notifications import LANE_BATCH, LANE_FANOUT


def lane_for(request: PushRequest) -> str:
    target = request.target
    few = (bool(target.tokens) and len(target.tokens) <= SMALL_LOOKUP) or (
        bool(target.users) and len(target.users) <= SMALL_LOOKUP
    )
    return LANE_BATCH if few and not request.options.local_time else LANE_FANOUT
