"""Due times, including local-time waves across timezones."""

from __future__ import annotations

from datetime import UTC, datetime

from pushsvc.model import Options
from pushsvc.scheduling.best_time import BestTime, label
from pushsvc.scheduling.due import (
    LATE_GRACE_SECONDS,
    initial_due_at,
    next_wave_at,
    ttl_lapsed,
    wave_lapsed,
    zone_due_at,
    zones_due,
    zones_lapsed,
    zones_passed,
)


def test_immediate_and_absolute() -> None:
    assert initial_due_at(Options(), 1000.0) == 1000.0
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert initial_due_at(Options(send_at=at), 0) == at.timestamp()


def test_local_time_starts_with_the_earliest_zone() -> None:
    wall = datetime(2026, 5, 1, 9, 0)
    first = initial_due_at(Options(send_at=wall, local_time=True), 0)
    # Pacific/Kiritimati is UTC+14: 09:00 there is 19:00 UTC the previous day.
    assert first == datetime(2026, 4, 30, 19, 0, tzinfo=UTC).timestamp()


def test_waves_follow_the_sun() -> None:
    wall = datetime(2026, 1, 15, 9, 0)
    tokyo = zone_due_at(wall, "Asia/Tokyo")  # 00:00 UTC
    paris = zone_due_at(wall, "Europe/Paris")  # 08:00 UTC in winter
    assert paris - tokyo == 8 * 3600
    due_at_tokyo = zones_due(wall, tokyo, set())
    assert "Asia/Tokyo" in due_at_tokyo and "Europe/Paris" not in due_at_tokyo
    assert next_wave_at(wall, set(due_at_tokyo)) > tokyo
    all_done = set(zones_due(wall, tokyo + 48 * 3600, set()))
    assert next_wave_at(wall, all_done) is None


def test_dst_is_respected() -> None:
    winter = zone_due_at(datetime(2026, 1, 15, 9, 0), "America/New_York")
    summer = zone_due_at(datetime(2026, 7, 15, 9, 0), "America/New_York")
    assert datetime.fromtimestamp(winter, UTC).hour == 14
    assert datetime.fromtimestamp(summer, UTC).hour == 13


def test_lateness_counts_against_the_ttl_beyond_a_grace() -> None:
    assert not ttl_lapsed(None, 0.0, 10**9)  # no TTL: never too late
    assert not ttl_lapsed(0, 100.0, 100.0 + LATE_GRACE_SECONDS)  # "now or never", a claim's slack late
    assert ttl_lapsed(0, 100.0, 100.0 + LATE_GRACE_SECONDS + 0.01)
    assert not ttl_lapsed(3600, 0.0, 3600.0) and ttl_lapsed(3600, 0.0, 3600.5)


def test_a_zone_is_late_from_its_own_time_and_quiet_hours_are_no_lateness() -> None:
    wall = datetime(2026, 1, 15, 9, 0)
    at_one = datetime(2026, 1, 15, 1, 0, 30, tzinfo=UTC).timestamp()  # Tokyo's 09:00 an hour ago, Shanghai's 30 s
    zones = ["Asia/Tokyo", "Asia/Shanghai"]
    assert zones_lapsed(zones, wall, True, None, 600, 0.0, at_one) == ["Asia/Tokyo"]
    assert zones_lapsed(zones, wall, True, None, 7200, 0.0, at_one) == []
    assert zones_lapsed(zones, wall, True, None, None, 0.0, at_one) == []
    # 09:00 falls in Tokyo's quiet hours 08:00-10:00: it is ready from 10:00 (01:00 UTC), 30 s ago: in time.
    assert zones_lapsed(["Asia/Tokyo"], wall, True, (8 * 60, 10 * 60), 600, 0.0, at_one) == []
    # Not local time: a zone is ready from the wave's due time.
    assert zones_lapsed(zones, None, False, None, 600, at_one - 700, at_one) == zones


def test_a_waves_lateness_counts_from_the_previous_waves_end_at_the_earliest() -> None:
    """A wave the previous one ran past (a throttle) is late by the campaign's own doing: not expired; time
    waited after that (an outage) counts as before."""
    assert wave_lapsed(60, 1000.0, None, 1100.0)  # no wave before it: late from its own time
    assert not wave_lapsed(60, 1000.0, 1090.0, 1100.0)  # the previous wave ended at 1090: 10 s late
    assert wave_lapsed(60, 1000.0, 1090.0, 1160.0)  # then 70 s more waited for nothing: expired
    assert wave_lapsed(60, 1000.0, 500.0, 1100.0)  # a previous wave that ended in time changes nothing
    wall = datetime(2026, 1, 15, 9, 0)
    tokyo_nine = datetime(2026, 1, 15, 0, 0, tzinfo=UTC).timestamp()
    one_hour_on = tokyo_nine + 3600 + 30
    assert zones_lapsed(["Asia/Tokyo"], wall, True, None, 600, 0.0, one_hour_on) == ["Asia/Tokyo"]
    assert zones_lapsed(["Asia/Tokyo"], wall, True, None, 600, 0.0, one_hour_on, one_hour_on - 60) == []
    best = BestTime(tokyo_nine, 24)
    assert best.lapsed([label(1)], 600, one_hour_on + 3600) == [label(1)]
    assert best.lapsed([label(1)], 600, one_hour_on + 3600, one_hour_on + 3500) == []


def test_a_schedule_passed_in_some_zones_leaves_those_out() -> None:
    wall = datetime(2026, 1, 15, 9, 0)
    ten_utc = datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp()
    passed = set(zones_passed(wall, ten_utc))
    assert {"Asia/Tokyo", "Europe/Paris", "UTC"} <= passed and "America/New_York" not in passed
    # Within the grace it still means now.
    assert "UTC" not in zones_passed(wall, datetime(2026, 1, 15, 9, 0, 59, tzinfo=UTC).timestamp())
