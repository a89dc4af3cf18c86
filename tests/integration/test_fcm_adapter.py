"""FcmProvider against the TLS FCM peer: exact v1 JSON, OAuth flow, and one test per outcome class/reason.

Everything goes through real sockets: firebase-admin credentials mint a JWT, google-auth fetches the
access token from the peer over HTTP/1.1+TLS, messages travel over HTTP/2+TLS, verified against the
test CA given as ``ca_file`` (the process-wide CA environment is not touched).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import firebase_admin
import pytest
import pytest_asyncio

from pushsvc.config import FcmSettings
from pushsvc.metrics import REGISTRY
from pushsvc.model import LocalizedText, Message, Options, Outcome, Recipient
from pushsvc.providers import fcm
from pushsvc.providers.base import Delivery, SendResult
from pushsvc.providers.fcm import FcmProvider
from pushsvc.simulators import tls
from pushsvc.simulators.fcm import DEFAULT_PROJECT as FCM_PROJECT
from pushsvc.simulators.fcm import FcmPeer
from tests.peers.fake_clock import FakeClock

# fcm_test_pki, fcm_test_peer (one TLS peer per session), fcm_test_service_account
pytest_plugins = ["tests.peers.fixtures_fcm"]

pytestmark = pytest.mark.integration

SEND_TIMEOUT = 2.0


@pytest.fixture
def peer(fcm_test_peer: FcmPeer) -> FcmPeer:
    """The session's peer with no scripts and no recorded requests."""
    fcm_test_peer.reset()
    return fcm_test_peer


@pytest.fixture
def settings(peer: FcmPeer, fcm_test_service_account: Path, fcm_test_pki: tls.TestPki) -> FcmSettings:
    return FcmSettings(
        service_account_file=str(fcm_test_service_account),
        endpoint=peer.base_url,
        ca_file=str(fcm_test_pki.ca_file),
    )


@pytest_asyncio.fixture
async def provider(settings: FcmSettings) -> AsyncIterator[FcmProvider]:
    p = FcmProvider("demo", settings, send_timeout=SEND_TIMEOUT)
    try:
        yield p
    finally:
        await p.close()


def alert(
    token: str,
    *,
    locale: str | None = None,
    message: Message | None = None,
    options: Options | None = None,
    expires_at: float | None = None,
    platform: str = "android",
) -> Delivery:
    return Delivery(
        notification_id="n-1",
        device=Recipient(app="demo", token=token, platform=platform, locale=locale),
        message=message or Message(title="Hi", body="there"),
        options=options or Options(),
        expires_at=expires_at,
    )


async def assert_still_works(provider: FcmProvider, peer: FcmPeer, token: str = "healthy-token-1") -> None:
    before = len(peer.requests_for(token))
    result = await provider.send(alert(token))
    assert result.outcome is Outcome.DELIVERED, result
    assert len(peer.requests_for(token)) == before + 1


# ------------------------------------------------------------------------------------------ encoding


async def test_alert_message_json_is_exact(provider: FcmProvider, peer: FcmPeer) -> None:
    message = Message(
        title="Hello",
        body="Default body",
        data={"order": 42, "vip": True, "ratio": 1.5, "gift": False, "note": "x"},
        badge=3,
        sound="default",
        category="ORDER",
        thread_id="orders",
        mutable_content=True,
        localized={"pt-BR": LocalizedText("Olá", "Corpo"), "de": LocalizedText(title="Hallo")},
    )
    options = Options(priority="high", collapse_key="orders-7", push_type="alert")
    expires_at = time.time() + 3600.5  # the half second absorbs the time until build: ttl is exactly 3600

    result = await provider.send(
        alert("tok-pt-1", locale="pt_BR", message=message, options=options, expires_at=expires_at)
    )

    assert result.outcome is Outcome.DELIVERED, result
    assert result.status == 200
    [received] = peer.requests
    assert result.provider_id is not None
    assert result.provider_id.startswith(f"projects/{FCM_PROJECT}/messages/")
    assert received.project == FCM_PROJECT
    assert received.http_version == "h2"
    assert received.headers["content-type"].startswith("application/json")
    assert received.headers["x-goog-api-format-version"] == "2"
    assert received.body == {
        "message": {
            "token": "tok-pt-1",
            "notification": {"title": "Olá", "body": "Corpo"},
            "data": {"order": "42", "vip": "true", "ratio": "1.5", "gift": "false", "note": "x"},
            # An Android device reads no other platform's block: none is sent (see the next test).
            "android": {"priority": "high", "ttl": "3600s", "collapse_key": "orders-7"},
        }
    }

    # Locale fallback: "de_AT" -> "de" (title only, body from the default), unknown locale -> default text.
    await provider.send(alert("tok-de-1", locale="de_AT", message=message, options=options))
    await provider.send(alert("tok-xx-1", locale="fr", message=message, options=options))
    assert peer.requests_for("tok-de-1")[0].message["notification"] == {
        "title": "Hallo",
        "body": "Default body",
    }
    assert peer.requests_for("tok-xx-1")[0].message["notification"] == {
        "title": "Hello",
        "body": "Default body",
    }


@pytest.mark.parametrize("platform", ["ios", "web"])
async def test_a_device_on_another_platform_gets_that_platforms_block(
    provider: FcmProvider, peer: FcmPeer, platform: str
) -> None:
    # fcm tokens are Android's today (token_kinds.py); should an iOS app or a browser hold one, FCM relays the
    # push with that platform's block, as our own APNs and Web Push adapters would send it.
    message = Message(
        title="Hello", badge=3, sound="default", category="ORDER", thread_id="orders", mutable_content=True
    )
    options = Options(priority="high", collapse_key="orders-7", push_type="alert")
    expires_at = time.time() + 3600.5
    result = await provider.send(alert(f"tok-{platform}-1", message=message, options=options, expires_at=expires_at,
                                       platform=platform))

    assert result.outcome is Outcome.DELIVERED, result
    blocks = {name: block for name, block in peer.requests[0].message.items() if name in ("apns", "webpush")}
    if platform == "ios":
        assert blocks == {
            "apns": {
                "headers": {
                    "apns-priority": "10",
                    "apns-push-type": "alert",
                    "apns-expiration": str(int(expires_at)),
                    "apns-collapse-id": "orders-7",
                },
                "payload": {
                    "aps": {"badge": 3, "sound": "default", "category": "ORDER", "thread-id": "orders",
                            "mutable-content": 1}
                },
            }
        }
    else:
        assert blocks == {"webpush": {"headers": {"Urgency": "high", "TTL": "3600"}}}


async def test_background_push_is_data_only(provider: FcmProvider, peer: FcmPeer) -> None:
    delivery = alert(
        "tok-bg-1",
        message=Message(data={"sync": True, "since": 17}),
        options=Options(priority="normal", push_type="background"),
    )
    result = await provider.send(delivery)

    assert result.outcome is Outcome.DELIVERED, result
    assert peer.requests[0].body == {
        "message": {
            "token": "tok-bg-1",
            "data": {"sync": "true", "since": "17"},
            "android": {"priority": "normal"},
        }
    }


async def test_expired_delivery_is_sent_with_zero_ttl(provider: FcmProvider, peer: FcmPeer) -> None:
    result = await provider.send(alert("tok-ttl0", expires_at=time.time() - 5))

    assert result.outcome is Outcome.DELIVERED, result
    message = peer.requests[0].message
    assert message["android"]["ttl"] == "0s"
    ios = await provider.send(alert("tok-ttl0-ios", expires_at=time.time() - 5, platform="ios"))
    assert ios.outcome is Outcome.DELIVERED, ios
    assert peer.requests_for("tok-ttl0-ios")[0].message["apns"]["headers"]["apns-expiration"] == "0"
    web = await provider.send(alert("tok-ttl0-web", expires_at=time.time() - 5, platform="web"))
    assert web.outcome is Outcome.DELIVERED, web
    assert peer.requests_for("tok-ttl0-web")[0].message["webpush"]["headers"]["TTL"] == "0"


# ---------------------------------------------------------------------------------------------- OAuth


async def test_oauth_token_is_fetched_from_peer_once_and_used(
    provider: FcmProvider, peer: FcmPeer, fcm_test_service_account: Path
) -> None:
    results = [await provider.send(alert(f"tok-auth-{i}")) for i in range(3)]

    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    [token_request] = peer.token_requests  # cached: one fetch for three sends
    assert token_request.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert token_request.granted is not None
    claims = token_request.claims or {}
    service_account = json.loads(await asyncio.to_thread(fcm_test_service_account.read_text))
    assert claims["iss"] == service_account["client_email"]
    assert "https://www.googleapis.com/auth/firebase.messaging" in claims["scope"].split() or (
        "https://www.googleapis.com/auth/cloud-platform" in claims["scope"].split()
    )
    assert [r.headers["authorization"] for r in peer.requests] == [f"Bearer {token_request.granted}"] * 3


async def test_start_prefetches_the_token(provider: FcmProvider, peer: FcmPeer) -> None:
    await provider.start()
    assert len(peer.token_requests) == 1
    assert peer.requests == []


async def test_rejected_access_token_is_refreshed_once(provider: FcmProvider, peer: FcmPeer) -> None:
    await provider.start()
    peer.revoke_tokens()

    result = await provider.send(alert("tok-revoked"))

    assert result.outcome is Outcome.DELIVERED, result
    assert [r.status for r in peer.requests] == [401, 200]
    assert len(peer.token_requests) == 2
    assert peer.requests[1].headers["authorization"] == (f"Bearer {peer.token_requests[1].granted}")


async def test_unauthenticated_after_refresh_is_auth_error(provider: FcmProvider, peer: FcmPeer) -> None:
    peer.script("tok-401", status=401)

    result = await provider.send(alert("tok-401"))

    assert result == SendResult(Outcome.AUTH_ERROR, reason="UNAUTHENTICATED", status=401)
    assert len(peer.requests_for("tok-401")) == 2  # original + one resend with a fresh token
    assert len(peer.token_requests) == 2
    await assert_still_works(provider, peer)


@pytest.fixture
def clock(peer: FcmPeer) -> Iterator[FakeClock]:
    """A fake clock the session's peer judges access tokens by, for this test only."""
    clock = FakeClock()
    peer.clock = clock
    yield clock
    peer.reset()  # back to the wall clock and an hour's lifetime


async def test_access_token_is_refreshed_before_it_expires(
    peer: FcmPeer, settings: FcmSettings, clock: FakeClock
) -> None:
    """Provider and peer on one fake clock, which the peer judges access tokens by (an hour's expires_in):
    replaced REFRESH_MARGIN_SECONDS before expiry, whatever the wall clock (google-auth's own check) says; three
    hours of sends never meet a 401."""
    provider = FcmProvider("demo", settings, send_timeout=SEND_TIMEOUT, clock=clock)
    fetched_before = REGISTRY.get_sample_value(
        "pushsvc_provider_token_refreshes_total", {"app": "demo", "provider": "fcm", "reason": "expiry"}
    )
    try:
        await assert_still_works(provider, peer)
        first = peer.token_requests[0].granted
        clock.advance(3600 - fcm.REFRESH_MARGIN_SECONDS - 1)  # one second before the refresh point
        await assert_still_works(provider, peer)
        assert peer.token_fetches == 1 and peer.requests[-1].headers["authorization"] == f"Bearer {first}"
        clock.advance(2)  # past it, still valid for almost five minutes: replaced before the next send
        await assert_still_works(provider, peer)
        assert peer.token_fetches == 2
        assert peer.requests[-1].headers["authorization"] == f"Bearer {peer.token_requests[1].granted}"

        # Three hours in uneven steps.
        for _ in range(111):
            clock.advance(97)
            assert (await provider.send(alert("tok-walk-1"))).outcome is Outcome.DELIVERED
    finally:
        await provider.close()
    assert {(r.status, r.auth) for r in peer.requests} == {(200, "valid")}  # never a 401, never an expired token
    fetch_times = [r.time for r in peer.token_requests]
    assert all(later - earlier < 3600 for earlier, later in itertools.pairwise(fetch_times))  # before expiry
    due = 3600 - fcm.REFRESH_MARGIN_SECONDS
    assert all(later - earlier >= due for earlier, later in itertools.pairwise(fetch_times))  # not before due
    assert peer.token_fetches == len(fetch_times) == 2 + (111 * 97) // 3300
    fetched_after = REGISTRY.get_sample_value(
        "pushsvc_provider_token_refreshes_total", {"app": "demo", "provider": "fcm", "reason": "expiry"}
    )
    assert (fetched_after or 0) - (fetched_before or 0) == peer.token_fetches - 1


async def test_expired_access_token_is_refused_by_the_peer(
    peer: FcmPeer, settings: FcmSettings, clock: FakeClock
) -> None:
    """The peer's side: a token past its expires_in gets 401, and the provider's one refresh and resend."""
    peer.token_lifetime = 600
    provider = FcmProvider("demo", settings, send_timeout=SEND_TIMEOUT, clock=FakeClock(clock()))
    try:
        await assert_still_works(provider, peer)
        clock.advance(600)  # the provider's clock stands still: it still thinks the token fresh
        result = await provider.send(alert("tok-expired"))
    finally:
        await provider.close()
    assert result.outcome is Outcome.DELIVERED
    assert [(r.status, r.auth) for r in peer.requests_for("tok-expired")] == [(401, "expired"), (200, "valid")]
    assert peer.token_fetches == 2


async def test_token_endpoint_refusal_is_auth_error(peer: FcmPeer, settings: FcmSettings, tmp_path: Path) -> None:
    sa_path = peer.write_service_account(tmp_path / "sa.json")
    info = json.loads(sa_path.read_text())
    info["client_email"] = "deleted-key@demo-project.iam.gserviceaccount.com"  # the peer knows no such key
    sa_path.write_text(json.dumps(info))
    settings = FcmSettings(str(sa_path), endpoint=settings.endpoint, ca_file=settings.ca_file)
    p = FcmProvider("demo-badkey", settings, send_timeout=SEND_TIMEOUT)
    try:
        result = await p.send(alert("tok-nokey"))
    finally:
        await p.close()

    assert result == SendResult(Outcome.AUTH_ERROR, reason="token_refresh_failed")
    assert peer.token_requests[0].granted is None
    assert peer.requests == []


async def test_tls_verification_uses_ca_file(
    peer: FcmPeer, settings: FcmSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without ca_file (and with no CA bundle from the environment) the test CA is not trusted.
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    settings = FcmSettings(settings.service_account_file, endpoint=settings.endpoint, ca_file=None)
    p = FcmProvider("demo-noca", settings, send_timeout=SEND_TIMEOUT)
    try:
        result = await p.send(alert("tok-noca"))
    finally:
        await p.close()

    assert result == SendResult(Outcome.RETRYABLE, reason="token_connection_error")
    assert peer.token_requests == []


# ------------------------------------------------------------------------------------ error answers

ERROR_CASES: list[tuple[str, dict[str, Any], Outcome, str, int, float | None]] = [
    ("unregistered", {"error_code": "UNREGISTERED"}, Outcome.INVALID_TOKEN, "UNREGISTERED", 404, None),
    (
        "sender-id-mismatch",
        {"error_code": "SENDER_ID_MISMATCH"},
        Outcome.INVALID_TOKEN,
        "SENDER_ID_MISMATCH",
        403,
        None,
    ),
    (
        "invalid-argument-token",
        {"error_code": "INVALID_ARGUMENT"},
        Outcome.INVALID_TOKEN,
        "INVALID_ARGUMENT",
        400,
        None,
    ),
    (
        "invalid-argument-payload",
        {
            "error_code": "INVALID_ARGUMENT",
            "message": "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), "
            "Field 'ttl', Illegal duration format; duration must end with 's'",
        },
        Outcome.REJECTED,
        "INVALID_ARGUMENT",
        400,
        None,
    ),
    (
        "quota-exceeded",
        {"error_code": "QUOTA_EXCEEDED", "retry_after": 30},
        Outcome.RETRYABLE,
        "QUOTA_EXCEEDED",
        429,
        30.0,
    ),
    ("unavailable", {"error_code": "UNAVAILABLE", "retry_after": 5}, Outcome.RETRYABLE, "UNAVAILABLE", 503, 5.0),
    ("internal", {"error_code": "INTERNAL"}, Outcome.RETRYABLE, "INTERNAL", 500, None),
    (
        "third-party-auth",
        {"error_code": "THIRD_PARTY_AUTH_ERROR"},
        Outcome.AUTH_ERROR,
        "THIRD_PARTY_AUTH_ERROR",
        401,
        None,
    ),
    ("permission-denied", {"status": 403}, Outcome.AUTH_ERROR, "PERMISSION_DENIED", 403, None),
    ("bad-gateway", {"status": 502}, Outcome.RETRYABLE, "UNKNOWN", 502, None),
    ("not-found-without-fcm-code", {"status": 404}, Outcome.REJECTED, "NOT_FOUND", 404, None),
]


@pytest.mark.parametrize(
    ("script", "outcome", "reason", "status", "retry_after"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_error_answer_is_classified(
    provider: FcmProvider,
    peer: FcmPeer,
    script: dict[str, Any],
    outcome: Outcome,
    reason: str,
    status: int,
    retry_after: float | None,
) -> None:
    token = "tok-scripted-1"
    peer.script(token, **script)
    tokens_before = len(peer.token_requests)

    result = await provider.send(alert(token))

    assert result == SendResult(outcome, reason=reason, status=status, retry_after=retry_after)
    # Exactly one request: no hidden retries of 5xx, no token refresh for FCM-level auth errors.
    assert len(peer.requests_for(token)) == 1
    assert len(peer.token_requests) - tokens_before <= 1
    await assert_still_works(provider, peer)


async def test_malformed_token_is_invalid_token(provider: FcmProvider, peer: FcmPeer) -> None:
    # Not scripted: the peer validates the token shape like FCM does.
    result = await provider.send(alert("not a registration token!"))

    assert result == SendResult(Outcome.INVALID_TOKEN, reason="INVALID_ARGUMENT", status=400)
    await assert_still_works(provider, peer)


async def test_oversized_payload_is_rejected_not_invalid_token(provider: FcmProvider, peer: FcmPeer) -> None:
    # Not scripted: FCM refuses payloads over 4 KB with INVALID_ARGUMENT "Android message is too big".
    result = await provider.send(alert("tok-big-1", message=Message(title="t", data={"blob": "x" * 5000})))

    assert result == SendResult(Outcome.REJECTED, reason="INVALID_ARGUMENT", status=400)
    await assert_still_works(provider, peer)


# ------------------------------------------------------------------------------------------ transport


async def test_hanging_request_times_out(settings: FcmSettings, peer: FcmPeer) -> None:
    p = FcmProvider("demo-hang", settings, send_timeout=0.5)
    try:
        await p.start()
        peer.script("tok-hang", action="hang")
        started = time.monotonic()
        result = await p.send(alert("tok-hang"))
        elapsed = time.monotonic() - started

        assert result == SendResult(Outcome.RETRYABLE, reason="timeout")
        assert 0.4 < elapsed < 1.5
        assert len(peer.requests_for("tok-hang")) == 1
        await assert_still_works(p, peer)
    finally:
        await p.close()


async def test_slow_answer_within_timeout_is_delivered(provider: FcmProvider, peer: FcmPeer) -> None:
    peer.script("tok-slow", delay=0.3)
    started = time.monotonic()
    result = await provider.send(alert("tok-slow"))

    assert result.outcome is Outcome.DELIVERED, result
    assert time.monotonic() - started >= 0.3


async def test_closed_connection_is_retryable(provider: FcmProvider, peer: FcmPeer) -> None:
    await assert_still_works(provider, peer, "tok-before-close")  # an open HTTP/2 connection
    peer.script("tok-close", action="close")
    started = time.monotonic()

    result = await provider.send(alert("tok-close"))

    assert result == SendResult(Outcome.RETRYABLE, reason="connection_error")
    assert time.monotonic() - started < SEND_TIMEOUT  # noticed at once, not by the timeout
    await assert_still_works(provider, peer)


async def test_concurrent_sends_share_one_token_and_multiplex(provider: FcmProvider, peer: FcmPeer) -> None:
    results = await asyncio.gather(*(provider.send(alert(f"tok-many-{i}")) for i in range(200)))

    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len({r.provider_id for r in results}) == 200
    assert len(peer.token_requests) == 1  # one shared refresh for 200 concurrent sends
    assert {r.http_version for r in peer.requests} == {"h2"}


async def test_close_deletes_the_firebase_app(settings: FcmSettings) -> None:
    p = FcmProvider("demo-close", settings, send_timeout=SEND_TIMEOUT)
    firebase_app = p.firebase_app
    assert firebase_app is not None
    assert firebase_admin.get_app(firebase_app.name) is firebase_app

    await p.close()

    with pytest.raises(ValueError):
        firebase_admin.get_app(firebase_app.name)
