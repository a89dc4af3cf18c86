"""Best-time delivery: each user is sent in the hour of day (UTC) they opened pushes most in the last 30 days.

A campaign with `schedule.best_time: {"window_hours": W}` and time T sends each user at the first moment from T
on whose UTC hour is their best hour, if that comes before T + W; a user with no best hour (no open in the 30
days before T), or whose hour does not come within the window, is sent at T. It is sent in waves, as a
local-time campaign is, one per hour of day: the wave `start` at T (the users of T's own hour, and everyone
without an hour in the window), then one wave per hour `hNN` at NN:00 (its first occurrence after T). The wave
labels travel in the same `wave_zones` / `zones_done` fields as local-time zones do.

A user's best hour is decided **as of T**, from the opens recorded RECORD_MARGIN before it (`Open.recorded <=
T - RECORD_MARGIN`) whose time `at` is less than 30 days before T: a pure function of what is stored
(store/open_hours.py), so every wave, every range, every replica and a resumed run decide alike, and an open
recorded during the campaign (or a late report of an old one) moves nobody from one wave to another: nothing is
sent twice, nobody is skipped. The margin is for a write stamped before T that lands after a wave has read:
store/open_hours.py gives up a write that could land that late.

Which devices a wave reads: every wave pages the whole audience and keeps the devices whose user's hour,
computed as of T, is its own (dispatch/chunks.py `_in_best_wave`). Nothing on the device says its hour (a
field there, rewritten by each open, could disagree with the opens and leave a device in no wave or in two);
the price is one read of the audience per wave, at most 24, against one for a campaign sent at once. Each
device is judged by its user at T (store/device_documents.py `user_as_of`: a device keeps when its user
changed), so a login during the campaign moves it to no other wave. A device registered during the campaign is
judged by its first user: sent in that user's wave if it is still ahead, not at all if it has passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pushsvc.scheduling.due import wave_lapsed

HOUR = 3600.0
DAY = 24 * HOUR
# Opens count towards the best hour for this long after they happened.
OPEN_DAYS = 30
OPEN_SECONDS = OPEN_DAYS * DAY
# schedule.best_time.window_hours: at least an hour, at most a week.
MIN_WINDOW_HOURS = 1
MAX_WINDOW_HOURS = 168
# How long after a campaign's time its waves may still decide a user's hour exactly: the longest window and a
# day's slack (a wave claimed late, a short pause). Opens are kept this much beyond the 30 days.
KEEP_SECONDS = MAX_WINDOW_HOURS * HOUR + DAY
# A user's opens kept: 8 a day for 30 days. Beyond it new ones are dropped until old ones age out
# (store/open_hours.py keep: never one a running campaign counted).
MAX_OPENS = 240

# Opens count for a campaign of time T if recorded this long before T: longer than a write of them may take
# (store/open_hours.py RECORD_ROUND_SECONDS) and than replicas' clocks may differ.
RECORD_MARGIN = 300.0

START = "start"  # the wave at the campaign's time: users of that hour and everyone without one in the window


class Open(NamedTuple):
    """One recorded open: when the user opened (`at`, the receipt's time) and when pushsvc learnt of it
    (`recorded`, the service's clock), both epoch seconds, and which receipt it came from (`id`: an open written
    twice by a retried write is kept once; "" for opens stored before ids)."""

    at: float
    recorded: float
    id: str = ""


def hour_of(epoch: float) -> int:
    """The UTC hour of day of an epoch time."""
    return int(epoch // HOUR) % 24


def best_hour(opens: Iterable[Open], as_of: float) -> int | None:
    """The UTC hour of day with the most opens known at `as_of` (recorded RECORD_MARGIN before it) that
    happened in the 30 days before it; ties go to the earliest hour; None without any."""
    counts = [0] * 24
    for o in opens:
        if o.recorded <= as_of - RECORD_MARGIN and as_of - OPEN_SECONDS < o.at <= as_of:
            counts[hour_of(o.at)] += 1
    return _argmax(counts)


def _argmax(counts: Sequence[int]) -> int | None:
    top = max(counts)
    return counts.index(top) if top > 0 else None


def label(hour: int) -> str:
    return f"h{hour:02d}"


@dataclass(frozen=True)
class BestTime:
    """A best-time campaign's waves: its time T (`start`, epoch seconds) and window."""

    start: float
    window_hours: int

    def due_at(self, hour: int) -> float:
        """The first moment from `start` on whose UTC hour is `hour`."""
        if hour == hour_of(self.start):
            return self.start
        day_start = self.start - self.start % DAY
        at = day_start + hour * HOUR
        return at if at > self.start else at + DAY

    def wave_of(self, hour: int | None) -> str:
        """The wave a user of best hour `hour` is sent in."""
        if hour is None or hour == hour_of(self.start) or self.due_at(hour) >= self.start + self.window_hours * HOUR:
            return START
        return label(hour)

    def waves(self) -> dict[str, float]:
        """Every wave and its due time, in time order (the start first)."""
        waves = {START: self.start}
        for hour in sorted(range(24), key=self.due_at):
            if self.wave_of(hour) != START:
                waves[label(hour)] = self.due_at(hour)
        return waves

    def ready(self, now: float, done: Iterable[str]) -> list[str]:
        """The waves not done whose time has come."""
        behind = set(done)
        return [name for name, at in self.waves().items() if name not in behind and at <= now]

    def next_at(self, done: Iterable[str], now: float = 0.0) -> float | None:
        """When the first wave not done is due (None: every wave is done). Hours do not move with `now` (the
        WaveSchedule interface passes it for quiet hours)."""
        behind = set(done)
        pending = [at for name, at in self.waves().items() if name not in behind]
        return min(pending) if pending else None

    def lapsed(
        self, wave: Sequence[str], ttl_seconds: int | None, now: float, previous_ended_at: float | None = None
    ) -> list[str]:
        """The waves of `wave` that begin at `now` later than their TTL allows, not counting the previous wave's
        overrun (scheduling/due.py wave_lapsed)."""
        waves = self.waves()
        return [name for name in wave if wave_lapsed(ttl_seconds, waves[name], previous_ended_at, now)]
