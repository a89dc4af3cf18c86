"""Best-time delivery's rules (scheduling/best_time.py) and its field of the campaign contract: a user's hour as
of the campaign's time, the opens kept (never one a running campaign counted), the waves, and the
parser's 400s (properties with hypothesis, like the other parsers of outside input)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.ingest.campaigns import campaign_form, parse_best_time, parse_campaign
from pushsvc.model import RequestError
from pushsvc.scheduling.best_time import (
    DAY,
    HOUR,
    KEEP_SECONDS,
    MAX_OPENS,
    MAX_WINDOW_HOURS,
    OPEN_SECONDS,
    RECORD_MARGIN,
    START,
    BestTime,
    Open,
    best_hour,
)
from pushsvc.store.device_documents import USER_CHANGES_KEPT, changed_user, user_as_of
from pushsvc.store.open_hours import keep

APPS = frozenset({"demo"})
FAST = settings(max_examples=200, deadline=None, derandomize=True)


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


T = at("2026-12-01T10:00:00+00:00")


def opened(iso: str, recorded: float | None = None) -> Open:
    return Open(at(iso), at(iso) if recorded is None else recorded)


def test_the_best_hour_is_the_most_opened_utc_hour_ties_going_to_the_earliest() -> None:
    opens = [opened("2026-11-28T14:05:00+00:00"), opened("2026-11-29T14:50:00+00:00"),
             opened("2026-11-29T03:10:00+00:00"), opened("2026-11-30T16:10:00+01:00")]  # 15:10 UTC
    assert best_hour(opens, T) == 14
    assert best_hour(opens[2:], T) == 3  # 03 and 15 once each: the earliest
    assert best_hour([], T) is None


def test_only_opens_recorded_by_then_and_less_than_30_days_old_count() -> None:
    old = opened("2026-10-31T05:00:00+00:00")  # 31 days before T
    assert best_hour([old], T) is None
    assert best_hour([opened("2026-11-01T12:00:00+00:00")], T) == 12  # 30 days less 2 hours
    # Reported after T (a late receipt, or an open during the campaign): not known at T, so it moves no one.
    late = opened("2026-11-30T20:00:00+00:00", recorded=T + 60)
    assert best_hour([opened("2026-11-29T03:00:00+00:00"), late, late], T) == 3
    assert best_hour([late], T) is None and best_hour([late], T + 60 + RECORD_MARGIN) == 20
    # Counted only RECORD_MARGIN after it was recorded: a write stamped before a wave read may land after it.
    assert best_hour([late], T + 60 + RECORD_MARGIN - 1) is None


def test_waves_start_at_the_campaign_time_then_one_per_hour_within_the_window() -> None:
    best = BestTime(T, 24)
    waves = best.waves()
    assert next(iter(waves)) == START and waves[START] == T and len(waves) == 24
    assert waves["h14"] == at("2026-12-01T14:00:00+00:00") and waves["h03"] == at("2026-12-02T03:00:00+00:00")
    assert "h10" not in waves  # T's own hour is the start wave
    assert best.wave_of(10) == START and best.wave_of(None) == START and best.wave_of(14) == "h14"
    short = BestTime(at("2026-12-01T10:30:00+00:00"), 6)
    assert best.ready(T, ()) == [START]
    assert short.wave_of(15) == "h15" and short.wave_of(16) == "h16"  # 16:00 is 5.5 h on; 17:00 is not
    assert short.wave_of(17) == START and short.wave_of(9) == START  # outside the window: at the start
    assert short.next_at([START]) == at("2026-12-01T11:00:00+00:00")
    assert short.next_at(list(short.waves())) is None
    assert best.lapsed(["h14"], 600, at("2026-12-01T14:30:00+00:00")) == ["h14"]
    assert best.lapsed(["h14"], 600, at("2026-12-01T14:05:00+00:00")) == []
    assert best.lapsed(["h14"], None, at("2026-12-05T14:30:00+00:00")) == []


@FAST
@given(st.integers(0, 10**9), st.integers(1, MAX_WINDOW_HOURS))
def test_every_hour_has_one_wave_due_in_the_window(start: int, window: int) -> None:
    best = BestTime(float(start), window)
    waves = best.waves()
    assert all(start <= due < start + max(window * HOUR, 1) for due in waves.values())
    assert list(waves.values()) == sorted(waves.values())
    for hour in range(24):
        assert best.wave_of(hour) in waves


OPENS = st.lists(
    st.builds(lambda a, delay: Open(float(a), float(a + delay)), st.integers(0, 80 * 86400),
              st.integers(-300, 40 * 86400)),
    max_size=30,
)


@FAST
@given(OPENS, OPENS, st.integers(0, 80 * 86400), st.integers(0, int(KEEP_SECONDS)))
def test_opens_recorded_later_never_change_the_hour_a_running_campaign_decided(
    stored: list[Open], later: list[Open], now: int, back: int
) -> None:
    """For a campaign whose time T is up to KEEP_SECONDS before now, the opens kept after more are recorded
    decide T's hour as all of them would: a new open never pushes out one that T counted (a full list drops
    the new one), and only opens too old for any such T age out."""
    t = now - back
    stored = keep([o for o in stored if o.recorded <= t], [], t)  # what was stored by T
    later = [Open(o.at, max(o.recorded, t + 1)) for o in later]  # recorded after T
    kept = keep(stored, later, now)
    assert len(kept) <= MAX_OPENS
    assert best_hour(kept, t) == best_hour(stored, t)


def test_a_full_list_drops_the_new_open_and_age_frees_room() -> None:
    now = at("2026-12-01T00:00:00+00:00")
    full = [Open(now - DAY - i, now - DAY) for i in range(MAX_OPENS)]
    new = Open(now - 10, now)
    assert keep(full, [new], now) == full
    aged = [Open(now - KEEP_SECONDS - OPEN_SECONDS - 1, now - KEEP_SECONDS - OPEN_SECONDS), *full[1:]]
    assert keep(aged, [new], now) == [*full[1:], new]


def test_an_open_written_again_by_a_retried_round_is_kept_once() -> None:
    """A round whose write applied but read back as lost (overwritten before the check) writes its opens again,
    restamped: the receipt's id keeps them once (the second review stored one twice)."""
    now = at("2026-12-01T00:00:00+00:00")
    first = Open(now - 3600, now, "r1")
    stored = keep([], [first], now)
    assert keep(stored, [Open(now - 3600, now + 5, "r1"), Open(now - 60, now + 5, "r2")], now + 5) == [
        first, Open(now - 60, now + 5, "r2")]
    legacy = Open(now - 7200, now - 10)  # stored before ids: never taken for another
    assert keep([legacy], [Open(now - 7200, now, "r3")], now) == [legacy, Open(now - 7200, now, "r3")]


CHANGES = st.lists(
    st.tuples(st.integers(1, 10**6), st.sampled_from([None, "u1", "u2", "u3"])), max_size=USER_CHANGES_KEPT - 1
)


@FAST
@given(st.sampled_from([None, "u1", "u2"]), st.integers(0, 10**6), CHANGES, st.integers(0, 10**6))
def test_a_devices_user_at_a_time_never_changes_once_a_wave_could_have_sent_it(
    first: str | None, created: int, steps: list[tuple[int, str | None]], t: int
) -> None:
    """A device registered at `created` with user `first`, then re-registered at later times with users
    (`upsert` records a change only when the user differs): from the moment the device exists at `t` or later,
    every later state answers the same user at `t`: its user then, or its first user if created after `t`."""
    doc: dict = {"token": "x", "user_id": first}
    states, when, user_at_t = [], float(created), first
    for delay, user in steps:
        when += delay
        if user != doc["user_id"]:
            doc = {**doc, "user_id": user, "user_changes": changed_user(doc, user, when)}
            if when <= t:
                user_at_t = user
        states.append((when, doc))
    assert user_as_of({"token": "x", "user_id": first}, t) == first
    for registered, state in states:
        if registered >= t:  # known by now
            assert user_as_of(state, t) == user_at_t, (state, t)


def test_hours_that_age_out_leave_the_next_best() -> None:
    now = at("2026-12-01T00:00:00+00:00")
    opens = [opened("2026-11-03T14:00:00+00:00"), opened("2026-11-04T14:00:00+00:00"),
             opened("2026-11-30T03:00:00+00:00")]
    assert best_hour(opens, now) == 14
    assert best_hour(opens, now + 4 * DAY) == 3  # the 14:00 opens are over 30 days old by then


# ------------------------------------------------------------------------------------ the campaign's field

CAMPAIGN: dict[str, Any] = {
    "id": "bt", "name": "Best", "app": "demo", "audience": {"segment": {"tags_any": ["promo"]}},
    "message": {"title": "Hi"}, "schedule": {"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}},
}


def test_best_time_is_a_campaign_field_compared_in_the_callers_terms() -> None:
    campaign_id, raw, fields, _ = parse_campaign(CAMPAIGN, APPS)
    assert fields["best_time"] == {"window_hours": 24}
    assert "best_time" not in raw["options"]  # not the request contract's: a campaign's schedule
    assert campaign_form(campaign_id, raw, fields)["schedule"]["best_time"] == {"window_hours": 24}


@pytest.mark.parametrize(
    ("schedule", "extra", "field"),
    [
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 0}}, {}, "schedule.best_time.window_hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 169}}, {}, "schedule.best_time.window_hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 2.5}}, {}, "schedule.best_time.window_hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": True}}, {}, "schedule.best_time.window_hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {}}, {}, "schedule.best_time.window_hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"hours": 2}}, {}, "schedule.best_time.hours"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": 24}, {}, "schedule.best_time"),
        ({"best_time": {"window_hours": 24}}, {}, "schedule.at"),
        ({"at": "2026-12-01T10:00:00", "local_time": True, "best_time": {"window_hours": 24}}, {},
         "schedule.best_time"),
        ({"at": "2026-12-01T10:00:00Z", "best_time": {"window_hours": 24}},
         {"quiet_hours": {"start": "22:00", "end": "08:00"}}, "schedule.best_time"),
    ],
)
def test_bad_best_time_is_a_400_naming_the_field(schedule: dict, extra: dict, field: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_campaign({**CAMPAIGN, "schedule": schedule, **extra}, APPS)
    assert raised.value.field == field, raised.value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=10,
)


@FAST
@given(JSON | st.dictionaries(st.sampled_from(["window_hours", "x"]), JSON | st.integers(-5, 200), max_size=2))
def test_the_parser_accepts_a_window_or_names_the_field(value: Any) -> None:
    try:
        parsed = parse_best_time(value)
    except RequestError as exc:
        assert exc.field is not None and exc.field.startswith("schedule.best_time")
    else:
        assert parsed == {"window_hours": value["window_hours"]} and 1 <= parsed["window_hours"] <= 168
