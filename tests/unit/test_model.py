"""The request contract: what is accepted, and that every rejection names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pushsvc.model import RequestError, parse_request


def request(**overrides: object) -> dict:
    base: dict = {
        "id": "r-1",
        "app": "demo",
        "target": {"tokens": ["a" * 64]},
        "message": {"title": "Hi", "body": "There"},
    }
    base.update(overrides)
    return base


def test_full_request_parses_with_defaults() -> None:
    parsed = parse_request(
        request(
            message={"title": "T", "body": "B", "data": {"n": 1, "ok": True}, "badge": 2, "sound": "default",
                     "category": "promo", "localized": {"pt-BR": {"title": "Olá"}}},
            options={"ttl_seconds": 60, "collapse_key": "c", "send_at": "2026-01-01T10:00:00Z"},
        ),
        frozenset({"demo"}),
    )
    assert parsed.options.priority == "high"
    assert parsed.options.push_type == "alert"
    assert parsed.options.send_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert parsed.message.data_as_strings() == {"n": "1", "ok": "true"}
    assert parsed.message.text_for("pt_BR").title == "Olá"
    assert parsed.message.text_for("pt_BR").body == "B"  # falls back to the default body
    assert parsed.message.text_for("pt").title == "T"  # "pt" alone does not match "pt-BR"
    assert parsed.message.text_for(None).title == "T"


def test_language_fallback_for_regional_locale() -> None:
    parsed = parse_request(request(message={"title": "T", "localized": {"de": {"title": "Hallo"}}}))
    assert parsed.message.text_for("de-AT").title == "Hallo"


def test_background_defaults_to_normal_priority() -> None:
    parsed = parse_request(request(message={"data": {"k": "v"}}, options={"push_type": "background"}))
    assert parsed.options.priority == "normal"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"app": "other"}, "app"),
        ({"target": {}}, "target"),
        ({"target": {"tokens": [], "users": ["u"]}}, "target"),
        ({"target": {"tokens": []}}, "target.tokens"),
        ({"target": {"tokens": [1]}}, "target.tokens[0]"),
        ({"target": {"segment": {}}}, "target.segment"),
        ({"target": {"segment": {"tags": ["x"]}}}, "target.segment.tags"),
        ({"message": {}}, "message"),
        ({"message": {"title": "t", "badge": -1}}, "message.badge"),
        ({"message": {"title": "t", "data": {"nested": {"a": 1}}}}, "message.data.nested"),
        ({"message": {"title": "t", "data": {"google.x": "1"}}}, "message.data.google.x"),
        ({"message": {"title": "t", "colour": "red"}}, "message.colour"),
        ({"options": {"priority": "urgent"}}, "options.priority"),
        ({"options": {"ttl_seconds": -1}}, "options.ttl_seconds"),
        ({"options": {"ttl_seconds": True}}, "options.ttl_seconds"),
        ({"options": {"collapse_key": "x" * 65}}, "options.collapse_key"),
        ({"options": {"collapse_key": "order-7\n"}}, "options.collapse_key"),
        ({"options": {"collapse_key": " order-7"}}, "options.collapse_key"),
        ({"options": {"collapse_key": "order-7 "}}, "options.collapse_key"),
        ({"options": {"collapse_key": "order\r\nx-evil: 1"}}, "options.collapse_key"),
        ({"options": {"collapse_key": "a\x00b"}}, "options.collapse_key"),
        ({"options": {"collapse_key": "a\x7fb"}}, "options.collapse_key"),
        ({"options": {"send_at": "tomorrow"}}, "options.send_at"),
        ({"options": {"send_at": "2026-01-01T10:00:00"}}, "options.send_at"),
        ({"options": {"local_time": True}}, "options.send_at"),
        ({"options": {"push_type": "background", "priority": "high"}}, "options.priority"),
        ({"extra": 1}, "extra"),
        ({"": 1}, "request"),
        ({"message": {"title": "t", "": 1}}, "message"),
        ({"x" * 100_000: 1}, "x" * 64 + "..."),
        ({"message": {"title": "t", "badge": 2**31}}, "message.badge"),
        ({"message": {"title": "t", "data": {"n": 2**64}}}, "message.data.n"),
        ({"message": {"title": "t", "data": {"n": float("nan")}}}, "message.data.n"),
        ({"message": {"title": "t", "data": {"n": float("inf")}}}, "message.data.n"),
        ({"message": {"title": "t", "data": {"n": "\ud800"}}}, "message.data.n"),
        ({"message": {"title": "\udfff"}}, "message.title"),
        ({"message": {"title": "t", "localized": {"": {"title": "x"}}}}, "message.localized"),
        ({"message": {"title": "t", "localized": {"\ud800": {"title": "x"}}}}, "message.localized.\ud800"),
    ],
)
def test_rejections_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request(**change), frozenset({"demo"}))
    assert info.value.field == field


def test_not_an_object() -> None:
    with pytest.raises(RequestError) as info:
        parse_request([1, 2])
    assert info.value.field == "request"


def test_duplicate_tokens_are_sent_once() -> None:
    parsed = parse_request(request(target={"tokens": ["t" * 10, "t" * 10, "u" * 10]}))
    assert parsed.target.tokens == ("t" * 10, "u" * 10)


def test_local_time_drops_offset() -> None:
    parsed = parse_request(request(options={"send_at": "2026-03-01T09:00:00+05:00", "local_time": True}))
    assert parsed.options.send_at == datetime(2026, 3, 1, 9, 0)


def test_voip_defaults_to_high_priority_and_needs_no_alert_text() -> None:
    parsed = parse_request(
        request(message={"data": {"call_id": "c-1", "video": False}}, options={"push_type": "voip", "ttl_seconds": 30})
    )
    assert parsed.options.push_type == "voip"
    assert parsed.options.priority == "high"
    assert parsed.options.ttl_seconds == 30
    assert parsed.message.title is None and parsed.message.body is None
    assert parsed.message.data == {"call_id": "c-1", "video": False}


@pytest.mark.parametrize(
    ("message", "options", "field"),
    [
        ({"data": {"call_id": "c"}}, {"push_type": "voip", "priority": "normal"}, "options.priority"),
        ({"title": "Incoming call"}, {"push_type": "voip"}, "message"),
        ({"title": "Incoming call", "data": {"call_id": "c"}}, {"push_type": "voip"}, "message"),
        ({"sound": "ring", "data": {"call_id": "c"}}, {"push_type": "voip"}, "message"),
        ({"badge": 1, "data": {"call_id": "c"}}, {"push_type": "voip"}, "message"),
        ({"localized": {"fr": {"title": "Appel"}}, "data": {"call_id": "c"}}, {"push_type": "voip"}, "message"),
        ({}, {"push_type": "voip"}, "message.data"),
        ({"data": {"call_id": "c"}}, {"push_type": "pushkit"}, "options.push_type"),
    ],
)
def test_voip_rejections_name_the_field(message: dict, options: dict, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request(message=message, options=options))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("send_at", "local_time"),
    [
        ("9999-12-31T23:59:59-23:59", False),  # to UTC overflowed year 9999 (OverflowError dropped a Kafka batch)
        ("0001-01-01T00:00:00+23:59", False),  # ... and year 1
        ("9999-12-31T23:59:59", True),  # a wall-clock time whose zone offsets leave datetime's range
        ("0001-01-01T00:00:00", True),
        ("1999-12-31T23:59:59Z", False),
        ("2100-01-01T00:00:00Z", False),
        ("2099-12-31T23:00:00-05:00", False),  # 2100-01-01T04:00Z
        ("2100-01-01T00:00:00", True),
    ],
)
def test_send_at_outside_the_supported_range_is_a_contract_error(send_at: str, local_time: bool) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request(options={"send_at": send_at, "local_time": local_time}))
    assert info.value.field == "options.send_at"
    assert "between 2000-01-01 and 2100-01-01" in info.value.reason


def test_send_at_range_edges_are_accepted() -> None:
    first = parse_request(request(options={"send_at": "2000-01-01T00:00:00Z"}))
    last = parse_request(request(options={"send_at": "2099-12-31T23:59:59.999999+00:00"}))
    assert first.options.send_at == datetime(2000, 1, 1, tzinfo=UTC)
    assert last.options.send_at == datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_long_unparseable_send_at_is_quoted_briefly() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request(options={"send_at": "x" * 100_000}))
    assert len(str(info.value)) < 200
