"""Settling a chunk's final results: what is counted how, and which invalid tokens are deactivated."""

from __future__ import annotations

from pushsvc.dispatch.sender import FinalResult
from pushsvc.dispatch.settle import settle
from pushsvc.model import Message, Options, Recipient
from pushsvc.providers.base import Delivery
from pushsvc.store.devices import Deactivation


def result(token: str, kind: str, push_type: str, outcome: str, reason: str = "", **extra: object) -> FinalResult:
    platform = "android" if kind == "fcm" else "ios"
    device = Recipient(app="demo", token=token, platform=platform, kind=kind)
    delivery = Delivery("n1", device, Message(data={"k": 1}), Options(push_type=push_type))  # type: ignore[arg-type]
    return FinalResult(delivery, outcome, reason, 1, **extra)  # type: ignore[arg-type]


def test_invalid_tokens_are_deactivated_with_the_time_their_answer_holds_for() -> None:
    results = [
        result("a", "apns", "alert", "delivered"),
        result("b", "apns", "alert", "invalid_token", "Unregistered", invalid_as_of=50.0),
        result("c", "fcm", "alert", "invalid_token", "SENDER_ID_MISMATCH", invalid_as_of=60.0, misconfiguration=True),
        result("d", "apns", "alert", "rejected", "BadTopic"),
    ]
    settled = settle("demo", "alert", results, lambda provider: False)
    assert settled.counts == {"delivered": 1, "invalid_token": 2, "rejected": 1}
    assert settled.deactivations == [
        Deactivation("b", "Unregistered", 50.0),
        Deactivation("c", "SENDER_ID_MISMATCH", 60.0),
    ]


def test_while_the_guard_is_tripped_wrong_setting_answers_count_as_auth_error_and_deactivate_nothing() -> None:
    results = [
        result("a", "apns", "alert", "invalid_token", "BadDeviceToken", invalid_as_of=1.0, misconfiguration=True),
        result("b", "apns", "alert", "invalid_token", "Unregistered", invalid_as_of=1.0),  # genuine: still goes
        result("c", "fcm", "alert", "invalid_token", "SENDER_ID_MISMATCH", invalid_as_of=1.0, misconfiguration=True),
    ]
    settled = settle("demo", "alert", results, lambda provider: provider == "apns")
    assert settled.counts == {"auth_error": 1, "invalid_token": 2}
    assert [d.token for d in settled.deactivations] == ["b", "c"]  # the FCM guard was not tripped


def test_an_answer_for_a_token_sent_on_another_kinds_route_deactivates_nothing() -> None:
    """DeviceTokenNotForTopic for a device recorded as a regular APNs token, answered to a VoIP push (on the
    VoIP topic): the token was asked about a topic it is not for; it is still good for alerts."""
    results = [
        result("a", "apns", "voip", "invalid_token", "DeviceTokenNotForTopic", invalid_as_of=1.0),
        result("b", "apns_voip", "voip", "invalid_token", "DeviceTokenNotForTopic", invalid_as_of=1.0),
    ]
    settled = settle("demo", "voip", results, lambda provider: False)
    assert settled.counts == {"invalid_token": 2}
    assert [d.token for d in settled.deactivations] == ["b"]
