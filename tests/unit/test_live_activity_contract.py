"""The Live Activity request contract (message.live_activity) and the APNs payload built from it.

Property-based: any JSON under message.live_activity is accepted or refused with a RequestError naming a
message.live_activity field, never anything else; every valid one comes out as Apple's aps keys, value for value.
Then each rule on its own, with the field its error names.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pushsvc.ingest.payload_limits import check_payload_size
from pushsvc.model import (
    LIVE_ACTIVITY_FIELDS,
    SEND_AT_MAX,
    SEND_AT_MIN,
    PushRequest,
    Recipient,
    RequestError,
    parse_request,
)
from pushsvc.providers.apns import build_payload
from pushsvc.providers.base import Delivery

APPS = frozenset({"demo"})
FAST = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SEND_TIME = 1_800_000_123  # the send time build_payload is given, for pushes without their own timestamp
FIELD = "message.live_activity"

# ------------------------------------------------------------------------------------------------ strategies

EPOCHS = st.integers(int(SEND_AT_MIN.timestamp()), int(SEND_AT_MAX.timestamp()) - 1)
# Any code point, lone surrogates included: a Python caller can pass them, and neither JSON nor BSON carries one.
ANY_TEXT = st.text(st.characters(codec=None), max_size=20)
EDGE_NUMBERS = st.sampled_from(
    [0, -1, 2**63 - 1, 2**64 - 1, 2**64, -(2**63) - 1, 10**40, 1e308, -0.0, math.inf, math.nan, True]
)
SCALARS = st.none() | st.booleans() | st.integers() | EDGE_NUMBERS | st.floats() | ANY_TEXT
ANY_JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=15
)
# What a JSON document can hold and the contract keeps: finite numbers, 64-bit integers, no lone surrogates.
PORTABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)  # fmt: skip
STATES = st.dictionaries(st.text(max_size=10), PORTABLE, max_size=5)


@st.composite
def valid_activities(draw: st.DrawFn) -> dict[str, Any]:
    """A message.live_activity the contract accepts, optional fields present or not."""
    event = draw(st.sampled_from(["start", "update", "end"]))
    activity: dict[str, Any] = {"event": event}
    if event != "end" or draw(st.booleans()):
        activity["content_state"] = draw(STATES)
    optional = {
        "timestamp": EPOCHS,
        "activity_id": st.text(min_size=1, max_size=128).filter(str.strip),
        "stale_date": EPOCHS,
        "relevance_score": st.integers(-(10**9), 10**9) | st.floats(-1e9, 1e9),
    }
    if event == "end":
        optional["dismissal_date"] = EPOCHS
    for name, values in optional.items():
        if draw(st.booleans()):
            activity[name] = draw(values)
    if event == "start":
        activity["attributes_type"] = draw(st.text(min_size=1, max_size=256).filter(str.strip))
        activity["attributes"] = draw(STATES)
    return activity


@st.composite
def mutated_activities(draw: st.DrawFn) -> Any:
    """A valid activity with fields replaced by any JSON, dropped, or added (known names and junk)."""
    activity = draw(valid_activities())
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*sorted(LIVE_ACTIVITY_FIELDS), "", "junk", "x" * 100]))
        if draw(st.booleans()):
            activity[name] = draw(ANY_JSON | EPOCHS | st.sampled_from(["start", "update", "end"]))
        else:
            activity.pop(name, None)
    return activity


def request(activity: Any, message: dict[str, Any] | None = None, push_type: str = "liveactivity") -> dict[str, Any]:
    return {
        "id": "la-1",
        "app": "demo",
        "target": {"tokens": ["a" * 64]},
        "message": {"title": "Order 7", "body": "On its way", **(message or {}), "live_activity": activity},
        "options": {"push_type": push_type},
    }


def aps_of(parsed: PushRequest, locale: str | None = None) -> dict[str, Any]:
    device = Recipient(app="demo", token="a" * 64, platform="ios", locale=locale)
    body = json.loads(build_payload(Delivery(parsed.id, device, parsed.message, parsed.options), SEND_TIME))
    assert set(body) == {"aps"}  # a Live Activity push has no custom keys (message.data is refused)
    return body["aps"]


# ------------------------------------------------------------------------------------------------ properties


@FAST
@given(ANY_JSON | st.dictionaries(st.sampled_from(sorted(LIVE_ACTIVITY_FIELDS)), ANY_JSON) | mutated_activities())
@example({"event": "end", "content_state": None})  # an end may leave the last state shown
@example({"event": "update", "content_state": {"k": "\ud800"}})  # a lone surrogate: not encodable
@example({"event": "update", "content_state": {"n": math.nan}})
@example({"event": "update", "content_state": {"n": 2**64}})
@example({"event": "start", "content_state": {}, "attributes_type": "A", "attributes": {"\udfff": 1}})
@example({"event": "update", "content_state": {}, "timestamp": True})
@example({"event": "update", "content_state": {}, "relevance_score": math.inf})
@example({"event": "update", "content_state": {"n": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}})  # too deep
@example({"event": "update", "content_state": {}, "x" * 1000: 1})  # an unknown key is named by its start
def test_any_live_activity_json_raises_only_a_live_activity_error(activity: Any) -> None:
    try:
        parsed = parse_request(request(activity), APPS)
    except RequestError as exc:
        assert exc.field == FIELD or exc.field.startswith((f"{FIELD}.", f"{FIELD}[")), exc
        assert len(exc.field) < 200
        return
    # Accepted: the APNs body builds, and intake's size check answers in the contract's terms only.
    aps = aps_of(parsed)
    assert aps["event"] == parsed.message.live_activity.event
    try:
        check_payload_size(parsed)
    except RequestError as exc:
        assert exc.field.startswith("message")


@FAST
@given(valid_activities(), st.sampled_from([None, "de", "de-AT", "fr"]))
def test_valid_activities_round_trip_to_apples_aps_keys(activity: dict[str, Any], locale: str | None) -> None:
    message = {"localized": {"de": {"body": "Unterwegs"}}, "sound": "chime.aiff"}
    parsed = parse_request(request(activity, message), APPS)
    aps = aps_of(parsed, locale)

    expected: dict[str, Any] = {
        "timestamp": activity.get("timestamp", SEND_TIME),
        "event": activity["event"],
        "alert": {
            "title": "Order 7",
            "body": "Unterwegs" if locale in ("de", "de-AT") else "On its way",
            "sound": "chime.aiff",
        },
    }
    for name, key in [
        ("content_state", "content-state"),
        ("stale_date", "stale-date"),
        ("dismissal_date", "dismissal-date"),
        ("relevance_score", "relevance-score"),
        ("attributes_type", "attributes-type"),
        ("attributes", "attributes"),
    ]:
        if name in activity:
            expected[key] = activity[name]
    if activity["event"] == "start":
        expected["input-push-token"] = 1
    assert aps == expected
    assert parsed.route == ("liveactivity_start" if activity["event"] == "start" else "liveactivity")


# ----------------------------------------------------------------------------------------------------- rules

STATE = {"eta": 5}
START = {"event": "start", "content_state": STATE, "attributes_type": "DeliveryAttributes", "attributes": {"o": 7}}


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(RequestError) as error:
        parse_request(raw, APPS)
    return error.value.field


@pytest.mark.parametrize(
    ("activity", "field"),
    [
        # attributes and their type: with start only, and required there
        ({"event": "update", "content_state": STATE, "attributes": {"o": 7}}, f"{FIELD}.attributes"),
        ({"event": "end", "attributes_type": "DeliveryAttributes"}, f"{FIELD}.attributes_type"),
        ({**START, "attributes_type": None}, f"{FIELD}.attributes_type"),
        ({k: v for k, v in START.items() if k != "attributes"}, f"{FIELD}.attributes"),
        ({**START, "attributes": [1]}, f"{FIELD}.attributes"),
        # dismissal_date: with end only
        ({"event": "update", "content_state": STATE, "dismissal_date": 1_800_000_000}, f"{FIELD}.dismissal_date"),
        ({**START, "dismissal_date": 1_800_000_000}, f"{FIELD}.dismissal_date"),
        # content_state: required to start or update
        ({"event": "update"}, f"{FIELD}.content_state"),
        ({**START, "content_state": None}, f"{FIELD}.content_state"),
        ({"event": "update", "content_state": "eta 5"}, f"{FIELD}.content_state"),
        # the rest
        ({"content_state": STATE}, f"{FIELD}.event"),
        ({"event": "pause", "content_state": STATE}, f"{FIELD}.event"),
        ({"event": "update", "content_state": STATE, "timestamp": 1.8e9}, f"{FIELD}.timestamp"),
        ({"event": "update", "content_state": STATE, "timestamp": 1_800_000_000_000}, f"{FIELD}.timestamp"),
        ({"event": "update", "content_state": STATE, "stale_date": "soon"}, f"{FIELD}.stale_date"),
        ({"event": "update", "content_state": STATE, "relevance_score": "high"}, f"{FIELD}.relevance_score"),
        ({"event": "update", "content_state": STATE, "activity_id": " "}, f"{FIELD}.activity_id"),
        ({"event": "update", "content_state": STATE, "content-state": STATE}, f"{FIELD}.content-state"),
        ("update", FIELD),
    ],
)
def test_each_rule_names_its_field(activity: Any, field: str) -> None:
    assert refused(request(activity)) == field


def test_an_end_may_leave_the_last_state_shown() -> None:
    parsed = parse_request(request({"event": "end", "dismissal_date": 1_800_000_000}), APPS)
    assert parsed.message.live_activity is not None and parsed.message.live_activity.content_state is None
    assert "content-state" not in aps_of(parsed)


@pytest.mark.parametrize(
    ("push_type", "message"),
    [("alert", {}), ("background", {"data": {"k": "v"}, "title": None, "body": None}), ("voip", {"data": {"k": 1}})],
)
def test_live_activity_is_refused_with_other_push_types(push_type: str, message: dict[str, Any]) -> None:
    raw = request({"event": "update", "content_state": STATE}, message, push_type)
    if push_type == "voip":
        raw["message"].pop("title")
        raw["message"].pop("body")
    assert refused(raw) == FIELD


def test_live_activity_is_required_with_push_type_liveactivity() -> None:
    raw = request(None)
    del raw["message"]["live_activity"]
    assert refused(raw) == FIELD


@pytest.mark.parametrize("name", ["data", "badge", "category", "thread_id", "mutable_content"])
def test_regular_alert_fields_are_refused(name: str) -> None:
    value = {"data": {"k": "v"}, "badge": 1, "category": "C", "thread_id": "t", "mutable_content": True}[name]
    assert refused(request({"event": "update", "content_state": STATE}, {name: value})) == f"message.{name}"


def test_a_start_needs_an_alert() -> None:
    """Apple starts no activity from a push without an alert: the default title or body is required."""
    assert refused(request(START, {"title": None, "body": None})) == "message"
    # Only a translation: devices in other locales would get no alert.
    assert refused(request(START, {"title": None, "body": None, "localized": {"de": {"body": "x"}}})) == "message"
    assert parse_request(request(START, {"title": None}), APPS).message.body == "On its way"


def test_a_sound_needs_alert_text() -> None:
    """The sound belongs to the alert (title, body, sound); an update may go without any alert at all."""
    update = {"event": "update", "content_state": STATE}
    assert refused(request(update, {"title": None, "body": None, "sound": "chime.aiff"})) == "message.sound"
    silent = parse_request(request(update, {"title": None, "body": None}), APPS)
    assert "alert" not in aps_of(silent)


def test_a_missing_timestamp_is_stamped_once_with_when_the_update_is_meant_to_show() -> None:
    from datetime import UTC, datetime

    from pushsvc.model import stamp_live_activity

    def raw(**options: Any) -> dict[str, Any]:
        return {"id": "s-1", "app": "demo", "target": {"tokens": ["t" * 64]},
                "message": {"live_activity": {"event": "update", "content_state": {"eta": 1}}},
                "options": {"push_type": "liveactivity", **options}}

    now = 1_800_000_000.7
    stamped, stored = stamp_live_activity(parse_request(raw(), APPS), raw(), now)
    assert stamped.message.live_activity.timestamp == stored["message"]["live_activity"]["timestamp"] == 1_800_000_000
    later = datetime.fromtimestamp(1_800_003_600, UTC).isoformat()
    stamped, _ = stamp_live_activity(parse_request(raw(send_at=later), APPS), raw(send_at=later), now)
    assert stamped.message.live_activity.timestamp == 1_800_003_600  # scheduled: not older than what goes before
    given = raw()
    given["message"]["live_activity"]["timestamp"] = 1_700_000_000
    stamped, _ = stamp_live_activity(parse_request(given, APPS), given, now)
    assert stamped.message.live_activity.timestamp == 1_700_000_000  # the producer's own is kept
