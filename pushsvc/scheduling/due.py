"""When a notification is due, including local-time delivery in each device's timezone.

A local-time notification ("09:00 wherever the device is") is sent in waves: each time the scheduler
claims it, the zones whose wall clock has reached the target are sent, then it is rescheduled for the
next zone. Devices without a known timezone are treated as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from pushsvc.model import Options
from pushsvc.model.timezones import all_timezones


def zone_due_at(wall_time: datetime, zone: str) -> float:
    """Epoch seconds at which the naive ``wall_time`` happens in ``zone``."""
    return wall_time.replace(tzinfo=ZoneInfo(zone)).timestamp()


def initial_due_at(options: Options, now: float) -> float:
    """When the scheduler should first look at a request."""
    if options.send_at is None:
        return now
    if options.local_time:
        # The first zone to reach the wall time; later zones follow in later waves.
        return min(zone_due_at(options.send_at, zone) for zone in all_timezones())
    return options.send_at.timestamp()


# How late a push (or a wave) may go out and still count as on time whatever its TTL: the slack claiming it
# may take (the safety poll, a full lane). Without it a TTL of 0 ("now or never") would expire pushes
# routinely a few seconds late.
LATE_GRACE_SECONDS = 30.0
# How far in the past a campaign's schedule.at may be and still mean "now": a marketer's clock and the
# request's way here.
PAST_SCHEDULE_GRACE_SECONDS = 60.0


def ttl_lapsed(ttl_seconds: int | None, due_at: float, now: float) -> bool:
    """Whether a push (or a wave of one) due at `due_at` and about to go out at `now` is no longer worth sending:
    later than its TTL (no TTL: never). The TTL a provider is given then counts from the send (dispatch)."""
    return ttl_seconds is not None and now - due_at > max(float(ttl_seconds), LATE_GRACE_SECONDS)


def wave_lapsed(ttl_seconds: int | None, ready_at: float, previous_ended_at: float | None, now: float) -> bool:
    """Whether a wave of a campaign (a local-time zone, a best-time hour) ready at `ready_at` and about to begin
    at `now` is too late to send (ttl_lapsed), counting lateness from the end of the campaign's previous wave
    at the earliest: a wave still sending (a throttle, a large audience) when the next was due made it late
    itself, and that is not worth expiring; time the campaign waited for nothing (the service down, a claim
    taken late) is."""
    since = ready_at if previous_ended_at is None else max(ready_at, previous_ended_at)
    return ttl_lapsed(ttl_seconds, since, now)


def zones_passed(wall_time: datetime, now: float) -> list[str]:
    """The zones where the naive `wall_time` has passed (beyond the grace): a local-time campaign created now
    sends to the others only."""
    since = now - PAST_SCHEDULE_GRACE_SECONDS
    return [z for z in all_timezones() if zone_due_at(wall_time, z) < since]


def zones_due(wall_time: datetime, now: float, done: set[str]) -> list[str]:
    return [z for z in all_timezones() if z not in done and zone_due_at(wall_time, z) <= now]


def next_wave_at(wall_time: datetime, done: set[str]) -> float | None:
    pending = [zone_due_at(wall_time, z) for z in all_timezones() if z not in done]
    return min(pending) if pending else None


def epoch_to_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


# --- quiet hours and timezone waves -----------------------------------------------------------------------
#
# A notification sent in waves (local time and/or quiet hours) goes to the zones that are "ready" now; the
# rest wait for the next wave. A zone is ready when its start time has passed (the wall-clock time there for
# local-time delivery, otherwise the notification's due time) and it is not inside quiet hours right now.

QuietHours = tuple[int, int]  # (start, end) in minutes after local midnight; start != end


def parse_hhmm(value: str) -> int:
    """'22:30' -> 1350; raises ValueError."""
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        raise ValueError("must be HH:MM")
    hours, minutes = int(value[:2]), int(value[3:])
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError("must be HH:MM between 00:00 and 23:59")
    return hours * 60 + minutes


def quiet_from_doc(value: Mapping[str, str] | None) -> QuietHours | None:
    """Quiet hours as stored ({"start": "HH:MM", "end": "HH:MM"}); raises on a value that is not."""
    if not value:
        return None
    return parse_hhmm(value["start"]), parse_hhmm(value["end"])


def in_quiet_hours(zone: str, now: float, quiet: QuietHours) -> bool:
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    start, end = quiet
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # spans midnight, e.g. 22:00-08:00


def quiet_end_after(zone: str, now: float, quiet: QuietHours) -> float:
    """Epoch seconds at which the quiet period that `now` falls in ends in `zone`."""
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    end = quiet[1]
    candidate = local.replace(tzinfo=None, hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if candidate <= local.replace(tzinfo=None):
        candidate += timedelta(days=1)
    return max(zone_due_at(candidate, zone), now + 1.0)


def _zone_start(zone: str, wall_time: datetime | None, local_time: bool) -> float:
    if local_time and wall_time is not None:
        return zone_due_at(wall_time, zone)
    return float("-inf")  # not local time: the notification is only claimed once it is due


def ready_zones(
    wall_time: datetime | None, local_time: bool, quiet: QuietHours | None, now: float, done: set[str]
) -> list[str]:
    return [
        z
        for z in all_timezones()
        if z not in done
        and _zone_start(z, wall_time, local_time) <= now
        and (quiet is None or not in_quiet_hours(z, now, quiet))
    ]


def _ready_from(zone: str, start: float, quiet: QuietHours | None) -> float:
    """The first moment from `start` on when `zone` is outside quiet hours: when a zone due at `start` is ready."""
    if quiet is not None and in_quiet_hours(zone, start, quiet):
        return quiet_end_after(zone, start, quiet)
    return start


def next_ready_at(
    wall_time: datetime | None, local_time: bool, quiet: QuietHours | None, now: float, done: set[str]
) -> float | None:
    """When the next not-yet-done zone becomes ready (None when every zone is done)."""
    best: float | None = None
    for zone in all_timezones():
        if zone in done:
            continue
        at = _ready_from(zone, max(_zone_start(zone, wall_time, local_time), now), quiet)
        if best is None or at < best:
            best = at
    return best


def zones_lapsed(
    zones: list[str], wall_time: datetime | None, local_time: bool, quiet: QuietHours | None, ttl_seconds: int | None,
    due_at: float, now: float, previous_ended_at: float | None = None,
) -> list[str]:
    """Of the zones of a wave about to begin at `now`, those that became ready longer ago than the TTL allows
    (wave_lapsed: not counting the previous wave's overrun). A zone is ready from its wall-clock time (local
    time; otherwise the wave's `due_at`), or, when that falls in quiet hours, from their end: a deferral the
    campaign asked for is not lateness."""
    if ttl_seconds is None:
        return []
    lapsed = []
    for zone in zones:
        start = zone_due_at(wall_time, zone) if local_time and wall_time is not None else due_at
        if wave_lapsed(ttl_seconds, _ready_from(zone, start, quiet), previous_ended_at, now):
            lapsed.append(zone)
    return lapsed



class WaveSchedule(Protocol):
    """A campaign sent in named waves (dispatch/fanout.py): local-time and quiet-hours zones (`ZoneWaves`),
    best-time hours (scheduling/best_time.py `BestTime`). `done` holds the waves done (and, for zones, those
    passed at creation)."""

    def ready(self, now: float, done: Iterable[str]) -> list[str]:
        """The waves not done whose time has come."""
        ...

    def lapsed(
        self, wave: Sequence[str], ttl_seconds: int | None, now: float, previous_ended_at: float | None = None
    ) -> list[str]:
        """The waves of `wave` that begin at `now` too late to send (wave_lapsed)."""
        ...

    def next_at(self, done: Iterable[str], now: float) -> float | None:
        """When the first wave not done is ready (None: every wave is done)."""
        ...


@dataclass(frozen=True)
class ZoneWaves:
    """The waves of a local-time or quiet-hours campaign: one per timezone, ready at its wall-clock time (local
    time; else the campaign's `due_at`) outside its quiet hours."""

    wall_time: datetime | None
    local_time: bool
    quiet: QuietHours | None
    due_at: float

    def ready(self, now: float, done: Iterable[str]) -> list[str]:
        return ready_zones(self.wall_time, self.local_time, self.quiet, now, set(done))

    def lapsed(
        self, wave: Sequence[str], ttl_seconds: int | None, now: float, previous_ended_at: float | None = None
    ) -> list[str]:
        return zones_lapsed(
            list(wave), self.wall_time, self.local_time, self.quiet, ttl_seconds, self.due_at, now, previous_ended_at
        )

    def next_at(self, done: Iterable[str], now: float) -> float | None:
        return next_ready_at(self.wall_time, self.local_time, self.quiet, now, set(done))
