"""The IANA timezones a device may name (the contract checks registrations against them) and the one assumed
when it names none; scheduling's local-time waves go through the same list."""

from __future__ import annotations

import functools
from zoneinfo import available_timezones

DEFAULT_TIMEZONE = "UTC"


@functools.cache
def all_timezones() -> tuple[str, ...]:
    return tuple(sorted(available_timezones() | {DEFAULT_TIMEZONE}))


def is_known_timezone(name: str) -> bool:
    return name in all_timezones()
