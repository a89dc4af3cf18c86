"""Live Activity pushes through ApnsProvider to the TLS + HTTP/2 ApnsPeer: topic, headers, priority, the aps keys of
start, update and end, the timestamp a push without one carries, alert text by locale, the size limit, render.

Deliveries are built from contract JSON (parse_request), so the request contract and the adapter are tested
together. Every push a device would act on has ``peer...live_activity.problems == ()``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest

from pushsvc.config import ApnsSettings
from pushsvc.model import Outcome, PushRequest, Recipient, parse_request
from pushsvc.providers.apns import MAX_PAYLOAD_BYTES, ApnsProvider
from pushsvc.providers.base import Delivery, PayloadRejected
from pushsvc.simulators.apns import (
    APNS_TOPIC,
    ApnsClientCert,
    ApnsPeer,
    ApnsSigningKey,
    ReceivedRequest,
    apns_cert_settings,
    apns_token_settings,
)
from pushsvc.simulators.tls import TestPki as Pki  # aliased: pytest would try to collect Test*

pytest_plugins = ("tests.peers.fixtures_apns",)
pytestmark = pytest.mark.integration

LA_TOPIC = f"{APNS_TOPIC}.push-type.liveactivity"
UPDATE_TOKEN = "b" * 64  # an activity's own token (kind apns_liveactivity)
START_TOKEN = "c" * 64  # a push-to-start token (kind apns_pushtostart)
# When the states of these tests were current: a minute ago (the device drops a timestamp far ahead).
T = int(time.time()) - 60
STATE = {"status": "on the way", "eta_minutes": 7, "progress": 0.4, "courier": {"name": "Ana", "rating": None}}

MakeProvider = Callable[..., ApnsProvider]


@pytest.fixture
def peer(apns_fresh_peer: ApnsPeer) -> ApnsPeer:
    # Live Activity tokens are only good on the Live Activity topic, as at Apple.
    apns_fresh_peer.bind_topic(UPDATE_TOKEN, LA_TOPIC)
    apns_fresh_peer.bind_topic(START_TOKEN, LA_TOPIC)
    return apns_fresh_peer


@pytest.fixture
async def make_provider(peer: ApnsPeer, apns_pki: Pki, apns_signing_key: ApnsSigningKey) -> AsyncIterator[MakeProvider]:
    providers: list[ApnsProvider] = []

    def make(settings: ApnsSettings | None = None) -> ApnsProvider:
        provider = ApnsProvider("app1", settings or apns_token_settings(peer, apns_pki, apns_signing_key), 3.0)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


@pytest.fixture
def provider(make_provider: MakeProvider) -> ApnsProvider:
    return make_provider()


def la_request(live_activity: dict[str, Any], message: dict[str, Any] | None = None, **options: Any) -> PushRequest:
    """A liveactivity request as a producer sends it (title/body default to a short alert)."""
    return parse_request(
        {
            "id": "la-1",
            "app": "app1",
            "target": {"tokens": [UPDATE_TOKEN]},
            "message": {"title": "Order 7", "body": "On its way", **(message or {}), "live_activity": live_activity},
            "options": {"push_type": "liveactivity", **options},
        }
    )


def delivery(
    request: PushRequest, token: str = UPDATE_TOKEN, *, locale: str | None = None, expires_at: float | None = None
) -> Delivery:
    kind = "apns_pushtostart" if request.route == "liveactivity_start" else "apns_liveactivity"
    device = Recipient(app="app1", token=token, platform="ios", locale=locale, kind=kind)
    return Delivery(request.id, device, request.message, request.options, expires_at)


async def send_one(provider: ApnsProvider, peer: ApnsPeer, request: PushRequest, **kwargs: Any) -> ReceivedRequest:
    result = await provider.send(delivery(request, **kwargs))
    assert result.outcome is Outcome.DELIVERED, result
    (received,) = peer.requests[-1:]
    assert received.live_activity is not None and received.live_activity.problems == ()
    return received


# ------------------------------------------------------------------------------------------ the three events


async def test_update_has_the_live_activity_topic_headers_and_aps_keys(provider: ApnsProvider, peer: ApnsPeer) -> None:
    request = la_request(
        {
            "event": "update", "content_state": STATE, "timestamp": T, "activity_id": "order-7",
            "stale_date": T + 900, "relevance_score": 75,
        },
        ttl_seconds=600, collapse_key="order-7",
    )  # fmt: skip
    received = await send_one(provider, peer, request, expires_at=1_800_000_600.5)

    headers = dict(received.headers)
    assert headers.pop("authorization").startswith("bearer ")
    headers.pop("apns-id")
    assert headers == {
        ":method": "POST",
        ":scheme": "https",
        ":path": f"/3/device/{UPDATE_TOKEN}",
        "host": "127.0.0.1",
        "apns-topic": LA_TOPIC,
        "apns-push-type": "liveactivity",
        "apns-priority": "10",  # the contract's default, as Apple's
        "apns-expiration": "1800000600",
        "apns-collapse-id": "order-7",
    }
    assert received.body == {
        "aps": {
            "timestamp": T,
            "event": "update",
            "content-state": STATE,
            "stale-date": T + 900,
            "relevance-score": 75,
            "alert": {"title": "Order 7", "body": "On its way"},
        }
    }


@pytest.mark.parametrize(("priority", "header"), [("normal", "5"), ("high", "10")])
async def test_priority_follows_the_request(provider: ApnsProvider, peer: ApnsPeer, priority: str, header: str) -> None:
    """Apple meters priority 10 against the device's Live Activity budget: frequent updates go at 5."""
    for event in ("update", "end"):
        request = la_request({"event": event, "content_state": STATE}, priority=priority)
        received = await send_one(provider, peer, request)
        assert received.headers["apns-priority"] == header


async def test_start_goes_to_a_push_to_start_token_with_attributes_and_alert(
    provider: ApnsProvider, peer: ApnsPeer
) -> None:
    request = la_request(
        {
            "event": "start", "content_state": STATE, "timestamp": T, "stale_date": T + 3600,
            "attributes_type": "DeliveryAttributes", "attributes": {"order": 7, "shop": "Pizzeria"},
        },
        message={"title": "Order 7", "body": "Your courier is on the way", "sound": "chime.aiff"},
    )  # fmt: skip
    assert request.route == "liveactivity_start"
    received = await send_one(provider, peer, request, token=START_TOKEN)

    assert (received.headers["apns-topic"], received.headers["apns-push-type"]) == (LA_TOPIC, "liveactivity")
    assert received.body == {
        "aps": {
            "timestamp": T,
            "event": "start",
            "content-state": STATE,
            "stale-date": T + 3600,
            "attributes-type": "DeliveryAttributes",
            "attributes": {"order": 7, "shop": "Pizzeria"},
            "input-push-token": 1,  # so the started activity gets its own token for updates
            # A Live Activity alert carries its sound inside "alert".
            "alert": {"title": "Order 7", "body": "Your courier is on the way", "sound": "chime.aiff"},
        }
    }


async def test_end_with_final_state_and_dismissal_date(provider: ApnsProvider, peer: ApnsPeer) -> None:
    final = {**STATE, "status": "delivered", "eta_minutes": 0}
    request = la_request({"event": "end", "content_state": final, "timestamp": T, "dismissal_date": T + 300})
    received = await send_one(provider, peer, request)
    assert received.body["aps"] == {
        "timestamp": T,
        "event": "end",
        "content-state": final,
        "dismissal-date": T + 300,
        "alert": {"title": "Order 7", "body": "On its way"},
    }


async def test_end_without_state_or_alert_sends_only_event_and_timestamp(
    provider: ApnsProvider, peer: ApnsPeer
) -> None:
    """An end that leaves the last state shown: no content-state at all (an empty object would not decode as the
    app's ContentState), and no title/body means no alert."""
    request = la_request({"event": "end", "timestamp": T}, message={"title": None, "body": None})
    received = await send_one(provider, peer, request)
    assert received.body == {"aps": {"timestamp": T, "event": "end"}}


# ------------------------------------------------------------------------------------------------ timestamp


async def test_timestamp_defaults_to_the_send_time_of_each_send(provider: ApnsProvider, peer: ApnsPeer) -> None:
    """Without live_activity.timestamp each push carries the second it was sent in, even though the body is
    cached per notification: a body reused from an earlier second would carry a stale time, and the device
    ignores a push older than the state it shows."""
    request = la_request({"event": "update", "content_state": STATE})
    stamps = []
    for attempt in range(2):
        if attempt:  # into the next second, as a later device of a slow fan-out (or a retry) is
            await asyncio.sleep(1.02 - time.time() % 1)
        before = int(time.time())
        received = await send_one(provider, peer, request)
        stamps.append(received.body["aps"]["timestamp"])
        assert before <= stamps[-1] <= int(time.time())
    assert stamps[1] > stamps[0]


async def test_a_given_timestamp_is_sent_as_it_is(provider: ApnsProvider, peer: ApnsPeer) -> None:
    request = la_request({"event": "update", "content_state": STATE, "timestamp": 1_700_000_000})
    await asyncio.sleep(1.02 - time.time() % 1)
    for token in (UPDATE_TOKEN, START_TOKEN):  # the same cached body for the second device
        peer.bind_topic(token, LA_TOPIC)
        received = await send_one(provider, peer, request, token=token)
        assert received.body["aps"]["timestamp"] == 1_700_000_000


# ------------------------------------------------------------------------------------------------ alert text

LOCALIZED = {
    "de": {"title": "Bestellung 7", "body": "Unterwegs"},
    "pt-BR": {"body": "A caminho"},
}


@pytest.mark.parametrize(
    ("locale", "alert"),
    [
        ("de_AT", {"title": "Bestellung 7", "body": "Unterwegs", "sound": "default"}),  # language match
        ("pt-BR", {"title": "Order 7", "body": "A caminho", "sound": "default"}),  # exact; title falls back
        ("fr", {"title": "Order 7", "body": "On its way", "sound": "default"}),  # no translation
        (None, {"title": "Order 7", "body": "On its way", "sound": "default"}),
    ],
)
async def test_alert_text_follows_the_device_locale(
    provider: ApnsProvider, peer: ApnsPeer, locale: str | None, alert: dict[str, str]
) -> None:
    request = la_request(
        {"event": "update", "content_state": STATE}, message={"localized": LOCALIZED, "sound": "default"}
    )
    received = await send_one(provider, peer, request, locale=locale)
    assert received.body["aps"]["alert"] == alert


# ------------------------------------------------------------------------------------------ size and render


async def test_payload_over_4096_bytes_is_rejected_without_a_request(provider: ApnsProvider, peer: ApnsPeer) -> None:
    """Apple's 4 KB limit holds for Live Activities too; UTF-8 bytes count, not characters."""

    def padded(pad: str) -> PushRequest:
        return la_request({"event": "update", "content_state": {"pad": pad}, "timestamp": T})

    base = len((await send_one(provider, peer, padded(""))).raw_body)
    room = MAX_PAYLOAD_BYTES - base
    fits = await send_one(provider, peer, padded("é" * (room // 2) + "p" * (room % 2)))
    assert len(fits.raw_body) == MAX_PAYLOAD_BYTES

    sent = len(peer.requests)
    big = delivery(padded("p" * (room + 1)))
    result = await provider.send(big)
    assert (result.outcome, result.reason, result.status) == (Outcome.REJECTED, "PayloadTooLarge", None)
    assert len(peer.requests) == sent  # no network call
    with pytest.raises(PayloadRejected) as rejected:
        provider.render(big)
    assert rejected.value.reason == "PayloadTooLarge"


async def test_render_shows_what_send_puts_on_the_wire(provider: ApnsProvider, peer: ApnsPeer) -> None:
    request = la_request(
        {
            "event": "start", "content_state": STATE, "timestamp": T,
            "attributes_type": "DeliveryAttributes", "attributes": {"order": 7},
        },
        priority="normal", ttl_seconds=0,
    )  # fmt: skip
    rendered = provider.render(delivery(request, START_TOKEN))
    assert peer.requests == []  # render never contacts APNs
    received = await send_one(provider, peer, request, token=START_TOKEN)

    assert dict(rendered.headers) == {
        "apns-topic": LA_TOPIC,
        "apns-push-type": "liveactivity",
        "apns-priority": "5",
        "apns-expiration": "0",
    }
    sent_headers = {k: v for k, v in received.headers.items() if k.startswith("apns-") and k != "apns-id"}
    assert sent_headers == rendered.headers
    assert rendered.body == received.body


async def test_render_stamps_the_send_time_when_no_timestamp_is_given(provider: ApnsProvider) -> None:
    before = int(time.time())
    rendered = provider.render(delivery(la_request({"event": "update", "content_state": STATE})))
    assert before <= rendered.body["aps"]["timestamp"] <= int(time.time())


# ---------------------------------------------------------------------------------------- tokens and topics


async def test_a_regular_token_is_not_for_the_live_activity_topic(provider: ApnsProvider, peer: ApnsPeer) -> None:
    """A Live Activity push to an app token (or the reverse) is DeviceTokenNotForTopic at Apple: the token is
    counted invalid for its push type, as for a VoIP token on the app topic."""
    peer.bind_topic("app-token", APNS_TOPIC)
    result = await provider.send(delivery(la_request({"event": "update", "content_state": STATE}), "app-token"))
    assert (result.outcome, result.reason, result.status) == (Outcome.INVALID_TOKEN, "DeviceTokenNotForTopic", 400)


async def test_certificate_auth_cannot_send_live_activities(
    apns_pki: Pki, apns_client_cert: ApnsClientCert, make_provider: MakeProvider
) -> None:
    """Apple takes Live Activity pushes over token-based connections only: the adapter refuses them with a
    reason that says so, before any request (the peer would answer TopicDisallowed, which says nothing)."""
    async with ApnsPeer(apns_pki, auth="cert", client_ca_file=str(apns_client_cert.ca_file)) as cert_peer:
        provider = make_provider(apns_cert_settings(cert_peer, apns_pki, apns_client_cert))
        result = await provider.send(delivery(la_request({"event": "update", "content_state": STATE})))
        assert (result.outcome, result.reason, result.status) == (Outcome.REJECTED, "LiveActivityNeedsTokenAuth", None)
        assert cert_peer.requests == []


# ------------------------------------------------------------------------------ the peer is no rubber stamp


@pytest.fixture
async def raw_post(
    peer: ApnsPeer, apns_pki: Pki, apns_signing_key: ApnsSigningKey
) -> AsyncIterator[Callable[..., Any]]:
    """POST anything to the peer over TLS + HTTP/2 with a valid provider token (what a buggy adapter would send)."""
    context = ssl.create_default_context(cafile=str(apns_pki.ca_file))
    token = jwt.encode(
        {"iss": apns_signing_key.team_id, "iat": int(time.time())},
        apns_signing_key.key_file.read_text(),
        algorithm="ES256",
        headers={"kid": apns_signing_key.key_id},
    )
    async with httpx.AsyncClient(http2=True, verify=context, base_url=peer.endpoint) as client:

        async def post(headers: dict[str, str], body: Any, device: str = UPDATE_TOKEN) -> tuple[int, str]:
            response = await client.post(
                f"/3/device/{device}", json=body, headers={"authorization": f"bearer {token}", **headers}
            )
            assert response.http_version == "HTTP/2"
            return response.status_code, response.json()["reason"] if response.content else ""

        yield post


@pytest.mark.parametrize(
    "headers",
    [
        {"apns-topic": APNS_TOPIC, "apns-push-type": "liveactivity"},  # the Live Activity topic is missing
        {"apns-topic": LA_TOPIC, "apns-push-type": "alert"},  # that topic takes nothing else
        {"apns-topic": LA_TOPIC},  # no push type at all
    ],
)
async def test_peer_refuses_a_live_activity_topic_without_its_push_type(
    raw_post: Callable[..., Any], headers: dict[str, str]
) -> None:
    body = {"aps": {"event": "update", "timestamp": int(time.time()), "content-state": STATE}}
    assert await raw_post(headers, body) == (400, "InvalidPushType")


@pytest.mark.parametrize(
    ("aps", "problems"),
    [
        ({"timestamp": T, "content-state": STATE}, ["aps.event: must be start, update or end"]),
        ({"event": "update", "content-state": STATE}, ["aps.timestamp: required, integer epoch seconds"]),
        (
            {"event": "update", "timestamp": int(time.time() * 1000), "content-state": STATE},
            ["aps.timestamp: more than 8 hours ahead (milliseconds instead of seconds?)"],
        ),
        ({"event": "update", "timestamp": T}, ["aps.content-state: required to update an activity"]),
        (
            {"event": "start", "timestamp": T, "content-state": STATE},
            [
                "aps.attributes-type: required to start an activity",
                "aps.attributes: required (an object) to start an activity",
                "aps.alert: required to start an activity",
            ],
        ),
        (
            {"event": "end", "timestamp": T, "alert": {"title": "t"}, "sound": "x.caf"},
            ["aps.sound: a Live Activity alert's sound goes in aps.alert"],
        ),
    ],
)
async def test_peer_answers_200_like_apns_but_records_what_a_device_would_drop(
    raw_post: Callable[..., Any], peer: ApnsPeer, aps: dict[str, Any], problems: list[str]
) -> None:
    """APNs does not read a Live Activity payload: a broken one gets its 200 and the device drops it."""
    status = await raw_post({"apns-topic": LA_TOPIC, "apns-push-type": "liveactivity"}, {"aps": aps})
    assert status == (200, "")
    (received,) = peer.requests
    assert received.live_activity is not None and list(received.live_activity.problems) == problems
