"""Receipts without servers: the parser names the field of a bad item, the funnel's values stay within bounded
sets, the funnel view's stages and rates, and a real receipt event is what the published contract says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from pushsvc.api import asyncapi
from pushsvc.ingest.receipts import MAX_RECEIPTS, check_not_before, parse_receipts
from pushsvc.model import RequestError
from pushsvc.outcomes import ReceiptEvent
from pushsvc.store.funnel import funnel_view, increments, locale_value, platform_value
from pushsvc.store.receipts import dimensions_of, receipt_key

APPS = frozenset({"demo"})
NOW = 1_800_000_000.0
AT = "2027-01-15T07:59:55Z"  # NOW - 5 s
GOOD = {"notification_id": "order-1", "token": "ab" * 32, "event": "received", "at": AT}
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts"


def field_of(body: Any) -> str:
    with pytest.raises(RequestError) as error:
        parse_receipts(body, APPS, NOW)
    return error.value.field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"app": "demo"}, "receipts"),
        ({"app": "nope", "receipts": [GOOD]}, "app"),
        ({"app": "demo", "receipts": [], }, "receipts"),
        ({"app": "demo", "receipts": [GOOD] * (MAX_RECEIPTS + 1)}, "receipts"),
        ({"app": "demo", "receipts": [GOOD], "extra": 1}, "extra"),
        ({"app": "demo", "receipts": [GOOD, {**GOOD, "event": "clicked"}]}, "receipts[1].event"),
        ({"app": "demo", "receipts": [GOOD, GOOD, {**GOOD, "at": "yesterday"}]}, "receipts[2].at"),
        ({"app": "demo", "receipts": [{**GOOD, "at": "2027-01-15T07:59:55"}]}, "receipts[0].at"),
        ({"app": "demo", "receipts": [{**GOOD, "at": "2027-01-15T09:00:00Z"}]}, "receipts[0].at"),  # future
        ({"app": "demo", "receipts": [{**GOOD, "user_id": "u1"}]}, "receipts[0].token"),  # both
        ({"app": "demo", "receipts": [{k: v for k, v in GOOD.items() if k != "token"}]}, "receipts[0].token"),
        ({"app": "demo", "receipts": [{**GOOD, "notification_id": ""}]}, "receipts[0].notification_id"),
        ({"app": "demo", "receipts": [{**GOOD, "device": "x"}]}, "receipts[0].device"),
        ({"app": "demo", "receipts": [GOOD, "x"]}, "receipts[1]"),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field(body: Any, field: str) -> None:
    assert field_of(body) == field


def test_a_good_batch_and_the_clock_skew_allowed() -> None:
    batch = parse_receipts({"app": "demo", "receipts": [
        GOOD, {"notification_id": "n2", "user_id": "alice", "event": "opened", "at": "2027-01-15T10:04:00+02:00"},
    ]}, APPS, NOW)
    assert [(r.index, r.token, r.user_id, r.event, r.at) for r in batch.receipts] == [
        (0, "ab" * 32, None, "received", NOW - 5), (1, None, "alice", "opened", NOW + 240),
    ]
    check_not_before(batch.receipts[0], NOW + 290)  # within the skew
    with pytest.raises(RequestError) as error:
        check_not_before(batch.receipts[1], NOW + 600)
    assert error.value.field == "receipts[1].at"


@pytest.mark.parametrize(
    ("locale", "value"),
    [("fr-FR", "fr"), ("pt_BR", "pt"), ("EN", "en"), ("fil-PH", "other"), ("f.r", "other"), ("$x", "other"),
     (None, "other"), ("", "other"), (7, "other")],
)
def test_locales_are_their_language_or_other(locale: Any, value: str) -> None:
    assert locale_value(locale) == value


def test_breakdown_values_are_bounded_and_a_users_devices_that_differ_are_mixed() -> None:
    assert platform_value("ios") == "ios" and platform_value("ios.x") == "other" and platform_value(None) == "other"
    assert dimensions_of([{"platform": "ios", "locale": "fr-FR"}]) == {"platform": "ios", "locale": "fr"}
    assert dimensions_of([{"platform": "ios", "locale": "fr-FR"}, {"platform": "android", "locale": "fr-CA"}]) == {
        "platform": "mixed", "locale": "fr"
    }
    assert increments("opened", {"platform": "ios", "locale": "fr"}) == {
        "funnel.opened": 1, "funnel_by.platform.ios.opened": 1, "funnel_by.locale.fr.opened": 1
    }


def test_receipt_keys_are_per_notification_device_and_event_and_hold_no_token() -> None:
    key = receipt_key("demo:order-1", "t:" + "ab" * 32, "opened")
    assert "ab" * 4 not in key and len(key) == 64
    assert len({key, receipt_key("demo:order-2", "t:" + "ab" * 32, "opened"),
                receipt_key("demo:order-1", "u:alice", "opened"),
                receipt_key("demo:order-1", "t:" + "ab" * 32, "received")}) == 4


def test_the_funnel_view_stages_and_rates() -> None:
    counts = {"targeted": 10, "delivered": 8, "invalid_token": 1, "unknown_token": 1, "rejected": 0}
    doc = {"funnel": {"received": 6, "opened": 3},
           "funnel_by": {"platform": {"ios": {"received": 4, "opened": 3}, "android": {"received": 2}}}}
    view = funnel_view(counts, doc)
    assert view == {
        "targeted": 10, "sent": 9, "delivered": 8, "received": 6, "opened": 3,
        "rates": {"sent": 0.9, "delivered": 0.8889, "received": 0.75, "opened": 0.5, "open_rate": 0.375},
        "by": {"platform": {"ios": {"received": 4, "opened": 3, "open_rate": 0.75},
                            "android": {"received": 2, "opened": 0, "open_rate": 0.0}}},
    }
    empty = funnel_view({"targeted": 0}, {})
    assert empty["rates"] == dict.fromkeys(("sent", "delivered", "received", "opened", "open_rate")) and not empty["by"]


def test_a_real_receipt_event_and_the_example_validate_against_the_contract() -> None:
    schema = Draft202012Validator(json.loads((CONTRACTS / "receipt-event.schema.json").read_text()))
    event = ReceiptEvent("demo:order-1", "order-1", "demo", "opened", NOW - 5, NOW,
                         {"platform": "ios", "locale": "fr"}, False)
    decoded = orjson.loads(event.encode())
    schema.validate(decoded)
    schema.validate(asyncapi.RECEIPT_EXAMPLE)
    assert decoded["type"] == "receipt" and decoded["id"] == "order-1"
    # An outcome event is not a receipt event: consumers tell them apart by `type`.
    assert not schema.is_valid(asyncapi.OUTCOME_EXAMPLE)


def test_a_hand_edited_funnel_reads_as_zero_instead_of_failing() -> None:
    doc = {"funnel": {"received": float("inf"), "opened": "x"}, "funnel_by": {"platform": {"ios": "junk"}},
           "counts": None}
    view = funnel_view({"targeted": 1, "delivered": 1}, doc)
    assert (view["received"], view["opened"], view["by"]) == (0, 0, {"platform": {}})
