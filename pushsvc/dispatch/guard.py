"""The misconfiguration guard: tell a wrong app-wide setting from dead tokens before deactivating a fleet.

A wrong APNs `environment` makes APNs answer BadDeviceToken for every token, a wrong topic
DeviceTokenNotForTopic, a wrong FCM project SENDER_ID_MISMATCH. Each of these answers alone reads "this
token is invalid", so deactivating on them one by one would deactivate every device of the app. One guard
per (app, provider) watches the share of such answers among the provider's answers in a sliding window;
when it is too large the guard trips: the sender pauses the provider (as after an authentication error)
and the devices answered with those reasons are kept (counted auth_error, see dispatch/settle.py).

A tripped guard stays tripped, through and after the pause, until a window holding at least `min_answers`
answers shows the share below the threshold again: a setting that is still wrong after the pause cannot
deactivate the devices answered before the guard would trip a second time.
"""

from __future__ import annotations

import enum
import math
from collections import deque


class Change(enum.Enum):
    NONE = "none"
    TRIPPED = "tripped"  # the share just crossed the threshold
    STILL_TRIPPED = "still_tripped"  # another suspect answer while tripped
    CLEARED = "cleared"  # enough answers in the window, and the share is below the threshold again


class MisconfigGuard:
    def __init__(self, share: float, window_seconds: float, min_answers: int) -> None:
        self.share = share
        self.window_seconds = window_seconds
        self.min_answers = min_answers
        # Per whole second: [second, answers, suspect answers]. Bounded by the window, O(1) per answer.
        self._buckets: deque[list[int]] = deque()
        self.answers = 0
        self.suspect = 0
        self.tripped = False
        self.cleared_at = -math.inf

    def record(self, now: float, suspect: bool) -> Change:
        """One provider answer; `suspect`: its reason is one a wrong setting gives for every token."""
        self._expire(now)
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self.answers += 1
        if suspect:
            bucket[2] += 1
            self.suspect += 1
        over = self.answers >= self.min_answers and self.suspect >= self.share * self.answers
        if not self.tripped:
            if suspect and over:
                self.tripped = True
                return Change.TRIPPED
            return Change.NONE
        if self.answers >= self.min_answers and not over:
            self.tripped = False
            self.cleared_at = now
            return Change.CLEARED
        return Change.STILL_TRIPPED if suspect else Change.NONE

    def tripped_since(self, since: float) -> bool:
        """Whether the guard was tripped at any moment from `since` until now."""
        return self.tripped or self.cleared_at >= since

    def _expire(self, now: float) -> None:
        oldest = now - self.window_seconds
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            _, answers, suspect = self._buckets.popleft()
            self.answers -= answers
            self.suspect -= suspect
