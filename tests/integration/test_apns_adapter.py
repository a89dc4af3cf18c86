"""ApnsProvider against the TLS + HTTP/2 ApnsPeer: exact requests, every outcome class, transport failures."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509

from pushsvc.config import ApnsSettings
from pushsvc.metrics import REGISTRY
from pushsvc.model import LocalizedText, Message, Options, Outcome, Recipient
from pushsvc.providers.apns import ApnsProvider
from pushsvc.providers.base import Delivery, SendResult
from pushsvc.simulators.apns import (
    APNS_TOPIC,
    ApnsClientCert,
    ApnsPeer,
    ApnsSigningKey,
    apns_cert_settings,
    apns_token_settings,
    make_client_cert,
    make_signing_key,
)
from pushsvc.simulators.tls import TestPki as Pki  # aliased: pytest would try to collect Test*
from tests.peers.h2_scripted import ScriptedH2Server

# The apns_pki, apns_signing_key, apns_client_cert and peer fixtures.
pytest_plugins = ("tests.peers.fixtures_apns",)
pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]

SEND_TIMEOUT = 3.0
TOKEN = "a" * 64

MakeProvider = Callable[..., ApnsProvider]


@pytest.fixture
def peer(apns_fresh_peer: ApnsPeer) -> ApnsPeer:
    """A fresh token-auth peer per test (conftest's session-wide apns_peer serves the end-to-end tests)."""
    return apns_fresh_peer


@pytest.fixture
async def make_provider(
    peer: ApnsPeer, apns_pki: Pki, apns_signing_key: ApnsSigningKey
) -> AsyncIterator[MakeProvider]:
    """Token-auth providers aimed at the peer; settings overridable; all closed at teardown."""
    providers: list[ApnsProvider] = []

    def make(
        settings: ApnsSettings | None = None, send_timeout: float = SEND_TIMEOUT, **overrides: Any
    ) -> ApnsProvider:
        settings = settings or apns_token_settings(peer, apns_pki, apns_signing_key, **overrides)
        provider = ApnsProvider("app1", settings, send_timeout)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


@pytest.fixture
async def provider(make_provider: MakeProvider) -> ApnsProvider:
    provider = make_provider()
    await provider.start()
    return provider


def delivery(
    token: str = TOKEN,
    *,
    locale: str | None = None,
    message: Message | None = None,
    options: Options | None = None,
    expires_at: float | None = None,
) -> Delivery:
    return Delivery(
        notification_id="n1",
        device=Recipient(app="app1", token=token, platform="ios", locale=locale),
        message=message or Message(title="Hello", body="World"),
        options=options or Options(),
        expires_at=expires_at,
    )


async def assert_still_works(provider: ApnsProvider, peer: ApnsPeer) -> None:
    token = f"after-{uuid.uuid4().hex}"
    result = await provider.send(delivery(token))
    assert result.outcome is Outcome.DELIVERED, result
    assert peer.requests_for(token)


# --------------------------------------------------------------------------------------- request shape


LOCALIZED = Message(
    title="Hello",
    body="Your order shipped",
    localized={
        "de": LocalizedText(title="Hallo", body="Deine Bestellung ist unterwegs"),
        "pt-BR": LocalizedText(body="Seu pedido foi enviado"),
    },
    badge=3,
    sound="chime.caf",
    category="ORDER",
    thread_id="orders",
    mutable_content=True,
    data={"order_id": 42, "express": True, "ratio": 1.5, "ref": "X-1", "aps": "must not win"},
)


async def test_alert_request_has_exact_headers_and_body(provider: ApnsProvider, peer: ApnsPeer) -> None:
    options = Options(priority="high", ttl_seconds=3600, collapse_key="order-42")
    request = delivery(locale="de_AT", message=LOCALIZED, options=options, expires_at=1_900_000_000.9)
    result = await provider.send(request)

    assert result.outcome is Outcome.DELIVERED
    (request,) = peer.requests
    headers = dict(request.headers)
    authorization = headers.pop("authorization")
    apns_id = headers.pop("apns-id")
    assert headers == {
        ":method": "POST",
        ":scheme": "https",
        ":path": f"/3/device/{TOKEN}",
        "host": "127.0.0.1",
        "apns-topic": APNS_TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": "1900000000",
        "apns-collapse-id": "order-42",
    }
    assert uuid.UUID(apns_id)
    assert authorization.startswith("bearer ")
    assert result.provider_id == apns_id  # the peer echoes apns-id
    assert result.status == 200 and result.reason == ""
    assert request.body == {
        "aps": {
            "alert": {"title": "Hallo", "body": "Deine Bestellung ist unterwegs"},
            "badge": 3,
            "sound": "chime.caf",
            "category": "ORDER",
            "thread-id": "orders",
            "mutable-content": 1,
        },
        "order_id": 42,
        "express": True,
        "ratio": 1.5,
        "ref": "X-1",
    }


@pytest.mark.parametrize(
    ("locale", "alert"),
    [
        ("pt-BR", {"title": "Hello", "body": "Seu pedido foi enviado"}),  # exact match, title falls back
        ("fr", {"title": "Hello", "body": "Your order shipped"}),  # no translation: default text
        (None, {"title": "Hello", "body": "Your order shipped"}),
    ],
)
async def test_alert_text_follows_device_locale(
    provider: ApnsProvider, peer: ApnsPeer, locale: str | None, alert: dict[str, str]
) -> None:
    result = await provider.send(delivery(locale=locale, message=LOCALIZED))
    assert result.outcome is Outcome.DELIVERED
    assert peer.requests[0].body["aps"]["alert"] == alert


async def test_minimal_alert_omits_optional_headers_and_keys(provider: ApnsProvider, peer: ApnsPeer) -> None:
    result = await provider.send(delivery(message=Message(body="Just a body")))
    assert result.outcome is Outcome.DELIVERED
    request = peer.requests[0]
    assert "apns-expiration" not in request.headers  # Apple's default storage applies
    assert "apns-collapse-id" not in request.headers
    assert request.body == {"aps": {"alert": {"body": "Just a body"}}}


async def test_background_push(provider: ApnsProvider, peer: ApnsPeer) -> None:
    message = Message(data={"sync": "inbox", "since": 1700000000})
    options = Options(priority="normal", push_type="background")
    result = await provider.send(delivery(message=message, options=options))

    assert result.outcome is Outcome.DELIVERED
    request = peer.requests[0]
    assert request.headers["apns-push-type"] == "background"
    assert request.headers["apns-priority"] == "5"
    assert request.body == {"aps": {"content-available": 1}, "sync": "inbox", "since": 1700000000}


@pytest.mark.parametrize(
    ("ttl", "expires_at", "expected"),
    [(0, 1_800_000_000.0, "0"), (600, 1_800_000_600.0, "1800000600"), (None, None, None)],
)
async def test_expiration_header(
    provider: ApnsProvider, peer: ApnsPeer, ttl: int | None, expires_at: float | None, expected: str | None
) -> None:
    result = await provider.send(delivery(options=Options(ttl_seconds=ttl), expires_at=expires_at))
    assert result.outcome is Outcome.DELIVERED
    assert peer.requests[0].headers.get("apns-expiration") == expected


async def test_ttl_without_absolute_expiry_counts_from_now(provider: ApnsProvider, peer: ApnsPeer) -> None:
    before = int(time.time())
    await provider.send(delivery(options=Options(ttl_seconds=300)))
    expiration = int(peer.requests[0].headers["apns-expiration"])
    assert before + 300 <= expiration <= int(time.time()) + 300


# ------------------------------------------------------------------------------------------ outcomes


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (410, "Unregistered", Outcome.INVALID_TOKEN),
        (400, "BadDeviceToken", Outcome.INVALID_TOKEN),
        (400, "DeviceTokenNotForTopic", Outcome.INVALID_TOKEN),
        (413, "PayloadTooLarge", Outcome.REJECTED),
        (400, "BadTopic", Outcome.REJECTED),
        (400, "TopicDisallowed", Outcome.REJECTED),
        (400, "BadCollapseId", Outcome.REJECTED),
        (400, "BadExpirationDate", Outcome.REJECTED),
        (400, "BadPriority", Outcome.REJECTED),
        (400, "MissingTopic", Outcome.REJECTED),
        (400, "BadMessageId", Outcome.REJECTED),
        (400, "PayloadEmpty", Outcome.REJECTED),
        (500, "InternalServerError", Outcome.RETRYABLE),
        (503, "ServiceUnavailable", Outcome.RETRYABLE),
        (429, "TooManyRequests", Outcome.RETRYABLE),
        (429, "TooManyProviderTokenUpdates", Outcome.RETRYABLE),
        (403, "ExpiredProviderToken", Outcome.AUTH_ERROR),
        (403, "InvalidProviderToken", Outcome.AUTH_ERROR),
        (403, "MissingProviderToken", Outcome.AUTH_ERROR),
        (403, "BadCertificate", Outcome.AUTH_ERROR),
        (403, "BadCertificateEnvironment", Outcome.AUTH_ERROR),
    ],
)
async def test_answer_is_classified(
    provider: ApnsProvider, peer: ApnsPeer, status: int, reason: str, outcome: Outcome
) -> None:
    peer.script(TOKEN, status=status, reason=reason)
    result = await provider.send(delivery())
    assert (result.outcome, result.reason, result.status) == (outcome, reason, status)
    assert result.retry_after is None
    assert result.provider_id == peer.requests[0].headers["apns-id"]
    await assert_still_works(provider, peer)


async def test_429_carries_retry_after(provider: ApnsProvider, peer: ApnsPeer) -> None:
    peer.script(TOKEN, status=429, reason="TooManyRequests", retry_after=17)
    result = await provider.send(delivery())
    assert result == SendResult(Outcome.RETRYABLE, "TooManyRequests", 429, 17.0, result.provider_id)


async def test_503_retry_after_as_http_date(provider: ApnsProvider, peer: ApnsPeer) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    peer.script(TOKEN, status=503, reason="ServiceUnavailable", retry_after=when)
    result = await provider.send(delivery())
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after is not None and 110 <= result.retry_after <= 121


async def test_payload_too_large_is_rejected_locally(provider: ApnsProvider, peer: ApnsPeer) -> None:
    # Find the encoded size of a small message, then pad it to exactly 4096 and 4097 bytes.
    await provider.send(delivery("probe", message=Message(body="x", data={"pad": ""})))
    base = len(peer.requests[0].raw_body)

    pad = "é" * ((4096 - base) // 2) + "p" * ((4096 - base) % 2)
    fits = await provider.send(delivery("fits", message=Message(body="x", data={"pad": pad})))
    assert fits.outcome is Outcome.DELIVERED
    assert len(peer.requests_for("fits")[0].raw_body) == 4096  # UTF-8 bytes count, not characters

    big = await provider.send(delivery("big", message=Message(body="x", data={"pad": "p" * (4097 - base)})))
    assert (big.outcome, big.reason, big.status) == (Outcome.REJECTED, "PayloadTooLarge", None)
    assert peer.requests_for("big") == []  # no network call


# ------------------------------------------------------------------------------------ transport trouble


async def test_timeout_when_peer_never_answers(make_provider: MakeProvider, peer: ApnsPeer) -> None:
    provider = make_provider(send_timeout=0.3)
    peer.script(TOKEN, action="hang")
    started = time.monotonic()
    result = await provider.send(delivery())
    elapsed = time.monotonic() - started

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "timeout")
    assert 0.3 <= elapsed < 1.0
    await asyncio.sleep(0.05)
    assert peer.streams_reset_by_client == 1  # the abandoned stream was cancelled at the server
    await assert_still_works(provider, peer)


async def test_silent_connection_is_replaced_after_timeout(
    make_provider: MakeProvider, peer: ApnsPeer
) -> None:
    provider = make_provider(send_timeout=0.3, max_connections=1)
    await assert_still_works(provider, peer)  # warm connection
    peer.script(TOKEN, action="hang")
    assert (await provider.send(delivery())).reason == "timeout"
    await assert_still_works(provider, peer)
    assert peer.connections_opened == 2


async def test_an_answer_slower_than_the_idle_timer_is_awaited_on_its_connection(
    make_provider: MakeProvider, peer: ApnsPeer
) -> None:
    """aioapns closes a connection INACTIVITY_TIME (10 s) after our last write, even with a stream open: a slow
    answer then failed as connection_error and the dispatcher sent the push again (a duplicate)."""
    provider = make_provider(send_timeout=5.0, max_connections=1)
    await assert_still_works(provider, peer)
    provider._protocol_class.INACTIVITY_TIME = 0.3  # the real timer, shortened for the test
    peer.script(TOKEN, delay=1.0)
    result = await provider.send(delivery())
    assert result.outcome is Outcome.DELIVERED, result
    assert len(peer.requests_for(TOKEN)) == 1
    assert peer.connections_opened == 1
    await asyncio.sleep(0.6)  # idle now: the timer closes the connection as before
    assert peer.connections_active == 0


async def test_goaway_fails_open_streams_and_next_send_uses_new_connection(
    make_provider: MakeProvider, peer: ApnsPeer
) -> None:
    provider = make_provider(send_timeout=5.0, max_connections=1)
    await assert_still_works(provider, peer)
    peer.script("stuck", action="hang")
    peer.script("bye", action="goaway", times=1)

    stuck = asyncio.create_task(provider.send(delivery("stuck")))
    await peer.wait_for_requests(2)
    started = time.monotonic()
    bye = await provider.send(delivery("bye"))

    assert (bye.outcome, bye.reason) == (Outcome.RETRYABLE, "connection_error")
    # The stream in flight on the dying connection fails at once instead of waiting out the 5 s timeout.
    assert (await stuck).reason == "connection_error"
    assert time.monotonic() - started < 1.0
    assert peer.goaways_sent == 1
    await assert_still_works(provider, peer)
    assert (await provider.send(delivery("bye"))).outcome is Outcome.DELIVERED
    assert peer.connections_opened == 2


async def test_peer_closing_connection(make_provider: MakeProvider, peer: ApnsPeer) -> None:
    provider = make_provider(max_connections=1)
    await assert_still_works(provider, peer)
    peer.script(TOKEN, action="close", times=1)
    started = time.monotonic()
    result = await provider.send(delivery())
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
    assert time.monotonic() - started < 1.0
    await assert_still_works(provider, peer)
    assert peer.connections_opened == 2


async def test_unreachable_endpoint_is_a_quick_connection_error(
    make_provider: MakeProvider, peer: ApnsPeer
) -> None:
    port = peer.port
    await peer.stop()
    provider = make_provider(endpoint=f"https://127.0.0.1:{port}")
    started = time.monotonic()
    result = await provider.send(delivery())
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
    assert time.monotonic() - started < 1.0


async def test_a_signing_key_that_broke_after_start_is_an_auth_error_not_an_adapter_error(
    make_provider: MakeProvider, peer: ApnsPeer, tmp_path: Path
) -> None:
    """Start-up refuses an unusable .p8 (pushsvc.credentials); one that reaches the adapter anyway (replaced
    on disk before a restart of the pool, a key the checks accept but PyJWT cannot use) must pause and page
    as an auth error, not fail each device as an unexplained ValueError."""
    broken = tmp_path / "broken.p8"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    provider = make_provider(key_file=str(broken))
    result = await provider.send(delivery())
    assert (result.outcome, result.reason) == (Outcome.AUTH_ERROR, "SigningKeyUnusable")
    assert peer.requests == []


async def test_server_certificate_is_verified(
    make_provider: MakeProvider, peer: ApnsPeer, apns_pki: Pki, apns_signing_key: ApnsSigningKey
) -> None:
    settings = apns_token_settings(peer, apns_pki, apns_signing_key, ca_file=None)
    provider = make_provider(settings)
    result = await provider.send(delivery())
    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
    assert peer.requests == []


async def test_many_error_bodies_do_not_stall_the_connection(
    make_provider: MakeProvider, peer: ApnsPeer
) -> None:
    """aioapns never returns HTTP/2 window to the server: after 64 KiB of error bodies it stalls."""
    provider = make_provider(max_connections=1, send_timeout=10.0)
    peer.set_default(status=400, reason="BadDeviceToken")
    count = 5000
    results = await asyncio.gather(*(provider.send(delivery(f"bad{i}")) for i in range(count)))

    assert {(r.outcome, r.reason) for r in results} == {(Outcome.INVALID_TOKEN, "BadDeviceToken")}
    assert len(b'{"reason": "BadDeviceToken"}') * count > 2 * 65535  # well past the initial window
    assert peer.connections_opened == 1


async def test_concurrent_sends_share_few_connections(make_provider: MakeProvider, peer: ApnsPeer) -> None:
    provider = make_provider(max_connections=2)
    results = await asyncio.gather(*(provider.send(delivery(f"t{i}")) for i in range(300)))
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert len({r.provider_id for r in results}) == 300
    assert peer.connections_opened <= 2


async def test_close_closes_connections(make_provider: MakeProvider, peer: ApnsPeer) -> None:
    provider = make_provider()
    await assert_still_works(provider, peer)
    assert peer.connections_active == 1
    await provider.close()
    await asyncio.sleep(0.05)
    assert peer.connections_active == 0


# ------------------------------------------------------------------------------------------------ auth


async def test_token_auth_sends_a_valid_es256_jwt(
    provider: ApnsProvider, peer: ApnsPeer, apns_signing_key: ApnsSigningKey
) -> None:
    assert (await provider.send(delivery())).outcome is Outcome.DELIVERED
    scheme, token = peer.requests[0].headers["authorization"].split(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": apns_signing_key.key_id, "typ": "JWT"}
    claims = jwt.decode(token, apns_signing_key.public_pem, algorithms=["ES256"])
    assert claims["iss"] == apns_signing_key.team_id
    assert abs(claims["iat"] - time.time()) < 60


async def test_token_signed_with_wrong_key_is_an_auth_error(
    make_provider: MakeProvider,
    peer: ApnsPeer,
    apns_pki: Pki,
    tmp_path: Path,
) -> None:
    other_key = make_signing_key(tmp_path)
    provider = make_provider(apns_token_settings(peer, apns_pki, other_key))
    result = await provider.send(delivery())
    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "InvalidProviderToken", 403)


async def test_a_fresh_token_refused_as_expired_keeps_token_and_connection(
    provider: ApnsProvider, peer: ApnsPeer
) -> None:
    """A token seconds old cannot be replaced (Apple: no new token within 20 minutes): the answer stands as an
    auth error, with no resend, no new token and no new connection (test_apns_provider_token.py has the
    refresh of an older one)."""
    await assert_still_works(provider, peer)
    peer.auth_error = "ExpiredProviderToken"
    result = await provider.send(delivery())
    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "ExpiredProviderToken", 403)
    assert len(peer.requests_for(TOKEN)) == 1
    peer.auth_error = None
    await assert_still_works(provider, peer)
    assert len({r.headers["authorization"] for r in peer.requests}) == 1
    assert peer.connections_opened == 1


async def test_every_connection_carries_the_one_shared_token(make_provider: MakeProvider, peer: ApnsPeer) -> None:
    """aioapns signs a token per connection (ECDSA: two signatures of the same claims differ); ours is one per key
    for the process, also across apps (two providers here: a connection each). Many connections of one app:
    test_apns_provider_token.py."""
    providers = [make_provider(), make_provider()]
    sends = [p.send(delivery(f"share-{i}-{n}")) for i, p in enumerate(providers) for n in range(20)]
    assert {r.outcome for r in await asyncio.gather(*sends)} == {Outcome.DELIVERED}
    assert len({r.connection_id for r in peer.requests}) == 2
    assert len({r.headers["authorization"] for r in peer.requests}) == 1


async def test_the_token_is_compressed_and_the_per_device_values_are_kept_out_of_the_table(
    provider: ApnsProvider, peer: ApnsPeer
) -> None:
    """What a connection's HPACK table may hold (RFC 7541 section 7.1.3): the provider token, the same on every
    request, is indexed (a byte on a connection's later requests instead of ~200); the device token (:path) and
    apns-id, new on each, go as never-indexed literals. h2's header normalization made the token never-indexed
    too, whatever send_push asked."""
    for n in range(3):
        result = await provider.send(delivery(f"hpack-{n}", options=Options(collapse_key="order-7")))
        assert result.outcome is Outcome.DELIVERED, result
    assert len({r.connection_id for r in peer.requests}) == 1
    for received in peer.requests:
        assert received.never_indexed == {":path", "apns-id"}, received.never_indexed
        assert received.headers["apns-collapse-id"] == "order-7"


async def test_certificate_auth(
    make_provider: MakeProvider, apns_pki: Pki, apns_client_cert: ApnsClientCert
) -> None:
    async with ApnsPeer(apns_pki, auth="cert", client_ca_file=str(apns_client_cert.ca_file)) as peer:
        provider = make_provider(apns_cert_settings(peer, apns_pki, apns_client_cert))
        result = await provider.send(delivery())
        assert result.outcome is Outcome.DELIVERED
        (request,) = peer.requests
        assert "authorization" not in request.headers
        assert request.client_cert is not None and request.client_cert["userId"] == apns_client_cert.uid
        assert request.headers["apns-topic"] == APNS_TOPIC
    # The certificate's expiry is exported for the PushsvcApnsCertificateExpiring alert.
    certificate = x509.load_pem_x509_certificate(apns_client_cert.cert_file.read_bytes())
    exported = REGISTRY.get_sample_value("pushsvc_apns_certificate_expiry_timestamp_seconds", {"app": "app1"})
    assert exported == certificate.not_valid_after_utc.timestamp()


async def test_client_certificate_from_unknown_ca_is_refused(
    make_provider: MakeProvider, apns_pki: Pki, apns_client_cert: ApnsClientCert, tmp_path: Path
) -> None:
    """The cert-auth peer is no rubber stamp: a certificate it does not trust never gets a push through."""
    async with ApnsPeer(apns_pki, auth="cert", client_ca_file=str(apns_client_cert.ca_file)) as peer:
        stranger = make_client_cert(tmp_path)
        provider = make_provider(apns_cert_settings(peer, apns_pki, stranger))
        result = await provider.send(delivery())
        assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
        assert peer.requests == []


# ------------------------------------------------------------------------------------------ simulator


async def test_standalone_simulator_logs_masked_notifications(
    make_provider: MakeProvider, apns_pki: Pki, apns_signing_key: ApnsSigningKey
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushsvc.simulators.apns", "--port", str(port),
        "--cert", str(apns_pki.cert_file), "--key", str(apns_pki.key_file),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            started = json.loads(await process.stdout.readline())
            assert started == {"event": "apns_peer_listening", "endpoint": f"https://127.0.0.1:{port}"}
            settings = ApnsSettings(
                topic=APNS_TOPIC,
                key_file=str(apns_signing_key.key_file),
                key_id=apns_signing_key.key_id,
                team_id=apns_signing_key.team_id,
                endpoint=f"https://127.0.0.1:{port}",
                ca_file=str(apns_pki.ca_file),
            )
            result = await make_provider(settings).send(delivery(message=Message(title="Hi", body="there")))
            line = json.loads(await process.stdout.readline())
    finally:
        process.terminate()
        await process.wait()
    assert result.outcome is Outcome.DELIVERED
    assert line["event"] == "apns_notification"
    assert line["token"] == "aaaaaa…(64)" and TOKEN not in json.dumps(line)
    assert line["payload"] == {"aps": {"alert": {"title": "Hi", "body": "there"}}}
    assert (line["topic"], line["push_type"], line["priority"], line["status"]) == (
        APNS_TOPIC,
        "alert",
        "10",
        200,
    )


async def test_an_answer_before_the_body_ends_the_stream_and_frees_its_slot(
    make_provider: MakeProvider, apns_pki: Pki
) -> None:
    # A server that answers at the headers and opens no window for the body (16 bytes; 4 streams at most): each
    # send must take the answer and end its side of the stream, or after 4 of them no stream is left.
    server = ScriptedH2Server(window=16, max_streams=4)
    server.mode = "early"
    await server.start(apns_pki.server_context(["h2"]))
    try:
        provider = make_provider(endpoint=f"https://localhost:{server.port}", max_connections=1)
        warm_up = await provider.send(delivery("early-first"))  # (its body may beat the SETTINGS)
        assert warm_up.outcome is Outcome.DELIVERED, warm_up
        # At once: a send waiting for a slot must find the answered stream reset, not still half open.
        results = await asyncio.gather(*(provider.send(delivery(f"early-{n}")) for n in range(12)))
        assert [result.outcome for result in results] == [Outcome.DELIVERED] * 12, results
        (connection,) = provider._protocol_class.live
        assert connection.conn.streams == {}  # nothing held open
        await server.assert_early_answers_reset(12)
    finally:
        await server.stop()
    assert server.connections == 1
