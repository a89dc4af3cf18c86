"""Due times, including local-time waves across timezones."""

from __future__ import annotations

from datetime import UTC, datetime

from pushsvc.model import Options
from pushsvc.scheduling.due import initial_due_at, next_wave_at, zone_due_at, zones_due


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
