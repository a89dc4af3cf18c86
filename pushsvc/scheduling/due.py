"""When a notification is due, including local-time delivery in each device's timezone.

A local-time notification ("09:00 wherever the device is") is sent in waves: each time the scheduler
claims it, the zones whose wall clock has reached the target are sent, then it is rescheduled for the
next zone. Devices without a known timezone are treated as UTC.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, available_timezones

from pushsvc.model import Options

DEFAULT_TIMEZONE = "UTC"


@functools.cache
def all_timezones() -> tuple[str, ...]:
    return tuple(sorted(available_timezones() | {DEFAULT_TIMEZONE}))


def is_known_timezone(name: str) -> bool:
    return name in all_timezones()


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


def zones_due(wall_time: datetime, now: float, done: set[str]) -> list[str]:
    return [z for z in all_timezones() if z not in done and zone_due_at(wall_time, z) <= now]


def next_wave_at(wall_time: datetime, done: set[str]) -> float | None:
    pending = [zone_due_at(wall_time, z) for z in all_timezones() if z not in done]
    return min(pending) if pending else None


def epoch_to_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
