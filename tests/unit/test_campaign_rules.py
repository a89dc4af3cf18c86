"""Quiet hours and wave arithmetic (scheduling/due.py) and campaign body validation (api/campaigns.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from pushsvc.ingest.campaigns import parse_campaign
from pushsvc.model import RequestError
from pushsvc.scheduling.due import (
    all_timezones,
    in_quiet_hours,
    next_ready_at,
    parse_hhmm,
    quiet_end_after,
    ready_zones,
)

APPS = frozenset({"demo"})
NIGHT = (22 * 60, 8 * 60)


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_parse_hhmm() -> None:
    assert parse_hhmm("00:00") == 0 and parse_hhmm("23:59") == 23 * 60 + 59
    for bad in ("24:00", "7:00", "07:60", "0700", "aa:bb"):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


def test_quiet_hours_spanning_midnight_in_device_local_time() -> None:
    now = at("2026-12-01T14:00:00+00:00")  # Tokyo 23:00, Paris 15:00, New York 09:00
    assert in_quiet_hours("Asia/Tokyo", now, NIGHT)
    assert not in_quiet_hours("Europe/Paris", now, NIGHT)
    assert not in_quiet_hours("America/New_York", now, NIGHT)
    assert quiet_end_after("Asia/Tokyo", now, NIGHT) == at("2026-12-01T23:00:00+00:00")  # 08:00 Tokyo
    day = (9 * 60, 17 * 60)
    assert in_quiet_hours("Europe/Paris", now, day) and not in_quiet_hours("Asia/Tokyo", now, day)
    assert quiet_end_after("Europe/Paris", now, day) == at("2026-12-01T16:00:00+00:00")  # 17:00 Paris


def test_quiet_end_across_a_dst_change() -> None:
    # Europe/Paris leaves summer time on 2026-10-25: 08:00 local is 07:00Z that morning.
    now = at("2026-10-25T01:30:00+00:00")
    assert quiet_end_after("Europe/Paris", now, NIGHT) == at("2026-10-25T07:00:00+00:00")


def test_waves_skip_quiet_zones_and_local_time_zones_not_yet_due() -> None:
    now = at("2026-12-01T14:00:00+00:00")
    ready = set(ready_zones(None, False, NIGHT, now, set()))
    assert "America/New_York" in ready and "Asia/Tokyo" not in ready
    nxt = next_ready_at(None, False, NIGHT, now, ready)
    assert nxt is not None and now < nxt <= at("2026-12-01T23:00:00+00:00")
    wall = datetime(2026, 12, 1, 9, 0)
    local = set(ready_zones(wall, True, None, at("2026-12-01T07:30:00+00:00"), set()))
    assert "Asia/Tokyo" in local and "Europe/Paris" not in local and "UTC" not in local
    # the next wave: 09:00 in UTC+1 zones (Paris) at 08:00Z
    assert next_ready_at(wall, True, None, at("2026-12-01T07:30:00+00:00"), local) == at("2026-12-01T08:00:00+00:00")
    # Local time 07:00 with quiet hours until 08:00: the zone waits for the end of its quiet hours.
    early = datetime(2026, 12, 1, 7, 0)
    done = set(all_timezones()) - {"Asia/Tokyo"}
    assert next_ready_at(early, True, NIGHT, at("2026-11-30T20:00:00+00:00"), done) == at(
        "2026-11-30T23:00:00+00:00"
    )
    assert next_ready_at(None, False, None, now, set(ready_zones(None, False, None, now, set()))) is None


def body(**extra: object) -> dict:
    return {"name": "Sale", "app": "demo", "audience": {"segment": {"tags_any": ["fr"]}},
            "message": {"title": "Hi"}, **extra}


def test_parse_campaign_builds_the_notification_request() -> None:
    campaign_id, raw, fields, parsed = parse_campaign(
        body(id="c-1", schedule={"at": "2026-12-01T09:00:00", "local_time": True},
             quiet_hours={"start": "21:00", "end": "09:00"}, throttle_per_second=50,
             options={"ttl_seconds": 60}),
        APPS,
    )
    assert campaign_id == "c-1" and raw["id"] == "campaign:c-1"
    assert raw["target"] == {"segment": {"tags_any": ["fr"]}}
    assert raw["options"] == {"ttl_seconds": 60, "send_at": "2026-12-01T09:00:00", "local_time": True}
    assert fields == {"kind": "campaign", "name": "Sale", "throttle_per_second": 50,
                      "quiet_hours": {"start": "21:00", "end": "09:00"}}
    assert (parsed.id, parsed.app, parsed.options.local_time) == ("campaign:c-1", "demo", True)
    assert parsed.target.segment is not None and parsed.target.segment.tags_any == ("fr",)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"id": "has space"}, "id"),
        ({"name": ""}, "name"),
        ({"audience": {"tokens": ["x" * 10]}}, "audience.tokens"),  # campaigns take users or a segment
        ({"audience": {"users": ["u1"], "segment": {"tags_any": ["fr"]}}}, "audience"),
        ({"audience": {}}, "audience"),
        ({"audience": {"segment": {}}}, "audience.segment"),
        ({"audience": {"users": []}}, "audience.users"),
        ({"schedule": {"at": "2026-12-01T09:00:00"}}, "schedule.at"),  # no offset, not local time
        ({"schedule": {"local_time": True}}, "schedule.at"),
        ({"schedule": {"at": "2026-12-01T09:00:00Z", "local_time": "yes"}}, "schedule.local_time"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00", "end": "08:00", "zone": "UTC"}}, "quiet_hours.zone"),
        ({"schedule": {"at": "2026-12-01T09:00:00Z", "every": "day"}}, "schedule.every"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": 22, "end": "08:00"}}, "quiet_hours.start"),
        ({"throttle_per_second": 0}, "throttle_per_second"),
        ({"throttle_per_second": True}, "throttle_per_second"),
        ({"options": {"send_at": "2026-12-01T09:00:00Z"}}, "options.send_at"),
        ({"message": {}}, "message"),
        ({"app": "nope"}, "app"),
        ({"budget": 1}, "budget"),
    ],
)
def test_parse_campaign_names_the_bad_field(extra: dict, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_campaign(body(**extra), APPS)
    assert caught.value.field == field
