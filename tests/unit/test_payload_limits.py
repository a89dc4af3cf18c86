"""Payload bounds at intake: what APNs or FCM would refuse for every device is a 400 / dead letter naming the field."""

from __future__ import annotations

import pytest

from pushsvc.ingest.intake import Accepted, Rejection, validate
from pushsvc.model import MAX_DATA_KEYS, MAX_LOCALIZED, Recipient
from pushsvc.providers import apns, fcm
from pushsvc.providers.base import Delivery

APPS = frozenset({"demo"})
# These tests are about APNs's and FCM's limits: an app with those two (Huawei's and Web Push's have their own).
PROVIDERS = {"demo": frozenset({"apns", "fcm"})}


def request(message: dict, **options: object) -> dict:
    return {"id": "r-1", "app": "demo", "target": {"tokens": ["a" * 64]}, "message": message, "options": options}


def rejected_field(raw: dict) -> str | None:
    outcome = validate(raw, APPS, PROVIDERS)
    assert isinstance(outcome, Rejection), "accepted"
    assert outcome.reason == "invalid_request"
    return outcome.field


def apns_size(raw: dict, locale: str | None = None) -> int:
    outcome = validate(raw, APPS, PROVIDERS)
    assert isinstance(outcome, Accepted), outcome
    req = outcome.request
    device = Recipient(app="demo", token="", platform="ios", locale=locale)
    return len(apns.build_payload(Delivery(req.id, device, req.message, req.options)))


def test_the_issue_request_200_kb_of_data_and_20000_locales_is_refused() -> None:
    localized = {f"x{i}": {"title": "t"} for i in range(20_000)}
    assert rejected_field(request({"title": "T", "data": {"blob": "x" * 200_000}})) == "message.data"
    assert rejected_field(request({"title": "T", "localized": localized})) == "message.localized"


def test_counts_are_capped_with_clear_errors() -> None:
    many_keys = {f"k{i}": 1 for i in range(MAX_DATA_KEYS + 1)}
    outcome = validate(request({"title": "T", "data": many_keys}), APPS, PROVIDERS)
    assert isinstance(outcome, Rejection) and outcome.field == "message.data"
    assert f"at most {MAX_DATA_KEYS} keys" in outcome.detail
    locales = {f"x{i}": {"title": "t"} for i in range(MAX_LOCALIZED + 1)}
    outcome = validate(request({"title": "T", "localized": locales}), APPS, PROVIDERS)
    assert isinstance(outcome, Rejection) and f"at most {MAX_LOCALIZED} locales" in outcome.detail
    fewer = request({"title": "T", "localized": dict(list(locales.items())[:-1])})
    assert isinstance(validate(fewer, APPS, PROVIDERS), Accepted)


def test_one_oversize_locale_is_named() -> None:
    raw = request({"title": "T", "body": "B", "localized": {"de": {"title": "Hallo"}, "fr": {"body": "é" * 2100}}})
    assert rejected_field(raw) == "message.localized.fr"


def test_oversize_default_text_names_message() -> None:
    assert rejected_field(request({"title": "T", "body": "b" * 4090, "data": {"k": "v"}})) == "message"


def test_apns_limit_is_exact_at_4096_bytes() -> None:
    base = request({"title": "T", "data": {"pad": ""}})
    room = apns.MAX_PAYLOAD_BYTES - apns_size(base)
    fits = request({"title": "T", "data": {"pad": "p" * room}})
    assert apns_size(fits) == apns.MAX_PAYLOAD_BYTES
    assert isinstance(validate(fits, APPS, PROVIDERS), Accepted)
    over = request({"title": "T", "data": {"pad": "p" * (room + 1)}})
    assert rejected_field(over) == "message"  # the data alone would fit: it is the whole message
    alone = request({"data": {"pad": "p" * (room + 40)}}, push_type="background")
    assert rejected_field(alone) == "message.data"


def test_voip_gets_apples_5120_bytes_but_fcm_still_counts_4096() -> None:
    # JSON-escaped quotes double in the APNs body but count once for FCM: APNs over 4096, under 5120.
    quoted = {"call": '"' * 2500}
    assert rejected_field(request({"data": quoted}, push_type="background")) == "message.data"
    assert isinstance(validate(request({"data": quoted}, push_type="voip"), APPS, PROVIDERS), Accepted)
    assert rejected_field(request({"data": {"call": "c" * 4100}}, push_type="voip")) == "message.data"


def test_fcm_counts_title_body_and_data_keys_and_values() -> None:
    assert fcm.counted_payload_bytes("Hé", "yo", {"k": "v", "n": "42"}) == 3 + 2 + 2 + 3
    # Within APNs (quotes are not escaped for FCM, unicode counts its UTF-8 bytes) but over FCM's 4096.
    data = {"k": "€" * 1400}  # 4200 bytes for FCM, and for APNs too: both refuse, FCM is checked first
    assert rejected_field(request({"title": "T", "data": data})) == "message.data"
    text = {"title": "€" * 1000, "body": "€" * 400, "data": {"k": "v"}}  # 4200 text bytes
    assert rejected_field(request(text)) == "message"


def test_campaign_bodies_get_the_same_bounds() -> None:
    from pushsvc.ingest.campaigns import parse_campaign
    from pushsvc.model import RequestError

    body = {"id": "c1", "name": "n", "app": "demo", "audience": {"users": ["u"]},
            "message": {"title": "T", "localized": {"fr": {"body": "x" * 4090}}}}
    with pytest.raises(RequestError) as info:
        parse_campaign(body, APPS)
    assert info.value.field == "message.localized.fr"


def test_each_app_meets_the_limits_of_the_providers_it_configures() -> None:
    """Huawei carries data as one JSON string inside the JSON message: every quote is escaped twice. Such data
    fits APNs's VoIP limit and FCM's count, but not Huawei's 4096 bytes: refused for an app with Huawei only."""
    voip = request({"data": {"call": '"' * 2500}}, push_type="voip")
    assert isinstance(validate(voip, APPS, {"demo": frozenset({"apns", "fcm"})}), Accepted)
    refused = validate(voip, APPS, {"demo": frozenset({"apns", "hms"})})
    assert isinstance(refused, Rejection) and refused.field == "message.data" and "Huawei" in refused.detail
    # Not knowing the app's providers, every limit applies: Huawei's refuses it.
    unknown = validate(voip, APPS)
    assert isinstance(unknown, Rejection) and unknown.field == "message.data" and "Huawei" in unknown.detail


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"title": "t", "body": "b" * 3990}, "message"),
        ({"title": "t", "data": {"blob": "x" * 3990}}, "message.data"),
        ({"title": "t", "localized": {"fr": {"body": "é" * 2000}}}, "message.localized.fr"),
    ],
)
def test_web_push_refuses_what_would_not_fit_one_encrypted_record(message: dict, field: str) -> None:
    """Web Push has 3993 bytes of JSON in one 4096-byte record: a request over it is a 400 naming the field,
    for the notification API and Kafka (validate) and for campaigns alike, never an exception."""
    from pushsvc.ingest.campaigns import parse_campaign
    from pushsvc.model import RequestError

    web_only = {"demo": frozenset({"webpush"})}
    refused = validate(request(message), APPS, web_only)
    assert isinstance(refused, Rejection) and (refused.field, refused.reason) == (field, "invalid_request")
    assert "Web Push" in refused.detail
    campaign = {"name": "n", "app": "demo", "audience": {"users": ["u"]}, "message": message}
    with pytest.raises(RequestError) as raised:
        parse_campaign(campaign, APPS, web_only)
    assert raised.value.field == field
    assert isinstance(validate(request({"title": "t", "body": "b" * 3000}), APPS, web_only), Accepted)


def test_a_live_activity_is_measured_as_apns_sends_it() -> None:
    activity = {"event": "update", "content_state": {"eta": "x" * 5000}}
    raw = request({"title": "Soon"}, push_type="liveactivity")
    raw["message"]["live_activity"] = activity
    assert rejected_field(raw) == "message.live_activity"
    activity["content_state"] = {"eta": "x" * 3000}
    raw["message"]["localized"] = {"de": {"body": "B" * 1500}}
    assert rejected_field(raw) == "message.localized.de"
    del raw["message"]["localized"]
    assert isinstance(validate(raw, APPS, PROVIDERS), Accepted)
