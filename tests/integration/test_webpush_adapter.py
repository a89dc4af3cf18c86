"""WebPushProvider against the Web Push peer: real TLS, real HTTP/1.1, every body decrypted by the peer.

The peer (pushsvc/simulators/webpush) decrypts each record with the subscription's private key and auth
secret using its own RFC 8291 code, checks the VAPID token's signature, audience, expiry and subject, and
the TTL / Urgency / Topic / Content-Encoding headers, so a DELIVERED here means a push service would have
taken the request and the browser could have read it. Nothing of the adapter is mocked; the name resolver
is replaced (by the provider's own `resolver` hook) only where a test needs a name to resolve somewhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import http_ece
import pytest
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.config import WebPushSettings
from pushsvc.model import LocalizedText, Message, Options, Outcome, Recipient, WebSubscription
from pushsvc.providers.base import Delivery, PayloadRejected
from pushsvc.providers.webpush import VAPID_LIFETIME_SECONDS, WebPushProvider
from pushsvc.providers.webpush_guard import EndpointRefused, GuardedResolver
from pushsvc.providers.webpush_payload import (
    DEFAULT_TTL_SECONDS,
    MAX_PAYLOAD_BYTES,
    build_payload,
    encode_payload,
    topic,
)
from pushsvc.simulators import tls
from pushsvc.simulators.webpush import (
    PeerSubscription,
    VapidKey,
    WebPushPeer,
    b64url,
    b64url_decode,
    decrypt_aes128gcm,
    make_subscription,
    make_vapid_key,
)
from pushsvc.subscriptions import endpoint_problem

# webpush_pki, webpush_vapid_key, webpush_peer (a fresh peer per test)
pytest_plugins = ["tests.peers.fixtures_webpush"]

pytestmark = pytest.mark.integration

SEND_TIMEOUT = 2.0
SUBJECT = "mailto:ops@example.com"


class FakeClock:
    """A clock tests move by hand (the provider's TTL and VAPID times, and the peer's idea of now)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class StaticResolver(AbstractResolver):
    """Answers from a table, and remembers what it was asked (what GuardedResolver wraps in these tests)."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host=address, port=port,
                          family=socket.AF_INET6 if ":" in address else socket.AF_INET, proto=0,
                          flags=socket.AI_NUMERICHOST)
            for address in self.names[host]
        ]

    async def close(self) -> None:
        pass


class TcpCounter:
    """A listener on 127.0.0.1 that counts TCP connections and never answers: proof of "no connection made"."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> TcpCounter:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def peer(webpush_peer: WebPushPeer) -> WebPushPeer:
    return webpush_peer


def webpush_settings(
    pki: tls.TestPki, key: VapidKey, allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), **overrides: Any
) -> WebPushSettings:
    fields: dict[str, Any] = {
        "vapid_private_key_file": str(key.private_key_file),
        "subject": SUBJECT,
        "allowed_hosts": list(allowed_hosts),
        "ca_file": str(pki.ca_file),
    }
    return WebPushSettings(**(fields | overrides))


@pytest.fixture
async def open_provider(
    webpush_pki: tls.TestPki, webpush_vapid_key: VapidKey
) -> AsyncIterator[Callable[..., WebPushProvider]]:
    """Makes providers (settings overridable) and closes them after the test."""
    made: list[WebPushProvider] = []

    def make(
        *,
        clock: Callable[[], float] = time.time,
        resolver: Callable[[], AbstractResolver] | None = None,
        send_timeout: float = SEND_TIMEOUT,
        **overrides: Any,
    ) -> WebPushProvider:
        settings = webpush_settings(webpush_pki, webpush_vapid_key, **overrides)
        provider = WebPushProvider("demo", settings, send_timeout, clock=clock, resolver=resolver)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
def provider(open_provider: Callable[..., WebPushProvider]) -> WebPushProvider:
    return open_provider()


def web_delivery(
    subscription: PeerSubscription | WebSubscription | None,
    *,
    message: Message | None = None,
    options: Options | None = None,
    expires_at: float | None = None,
    locale: str | None = None,
    token: str = "web:device-token-1",
) -> Delivery:
    if isinstance(subscription, PeerSubscription):
        subscription = subscription.web_subscription
    return Delivery(
        notification_id="n-1",
        device=Recipient(app="demo", token=token, platform="web", locale=locale, subscription=subscription),
        message=message or Message(title="Hi", body="there"),
        options=options or Options(),
        expires_at=expires_at,
    )


async def assert_still_works(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    result = await provider.send(web_delivery(subscription))
    assert result.outcome is Outcome.DELIVERED, result
    assert len(peer.pushes_for(subscription)) == 1


# ------------------------------------------------------------------------------------- payload, encryption


async def test_decrypted_payload_is_exactly_the_payload_built(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    message = Message(
        title="Hello",
        body="Default body",
        data={"order": 42, "vip": True, "ratio": 1.5, "note": "x"},
        badge=3,
        sound="default",
        category="ORDER",  # APNs-only fields are not part of a web push
        thread_id="orders",
        localized={"pt-BR": LocalizedText("Olá", "Corpo")},
    )
    delivery = web_delivery(subscription, message=message, options=Options(collapse_key="orders-7"), locale="pt_BR")

    result = await provider.send(delivery)

    assert result.outcome is Outcome.DELIVERED, result
    assert result.status == 201
    [push] = peer.pushes_for(subscription)
    assert push.problem is None
    assert result.provider_id is not None and result.provider_id.startswith(f"{peer.base_url}/message/")
    assert push.plaintext == encode_payload(build_payload(delivery))
    assert push.payload == {
        "notification_id": "n-1",
        "type": "alert",
        "title": "Olá",
        "body": "Corpo",
        "badge": 3,
        "sound": "default",
        "tag": "orders-7",
        "data": {"order": 42, "vip": True, "ratio": 1.5, "note": "x"},
    }
    # One record: header (86 bytes) + plaintext + delimiter + tag.
    assert len(push.body) == 86 + len(push.plaintext) + 17
    assert push.headers["content-encoding"] == "aes128gcm"
    assert push.headers["content-type"] == "application/octet-stream"


async def test_render_is_what_is_sent_without_credentials(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    clock = FakeClock()
    provider = open_provider(clock=clock)
    subscription = peer.subscribe()
    options = Options(collapse_key="news", priority="normal", ttl_seconds=60)
    delivery = web_delivery(subscription, options=options, expires_at=clock.now + 60)

    rendered = provider.render(delivery)
    assert (await provider.send(delivery)).outcome is Outcome.DELIVERED

    [push] = peer.pushes_for(subscription)
    assert rendered.body == push.payload
    assert "Authorization" not in rendered.headers
    for name, value in rendered.headers.items():
        assert push.headers[name.lower()] == value
    assert subscription.auth not in str(rendered) and subscription.p256dh not in str(rendered)


async def test_a_background_push_is_never_sent_to_a_browser(provider: WebPushProvider, peer: WebPushPeer) -> None:
    """Browsers subscribe with userVisibleOnly: a push the service worker shows nothing for still shows a
    notification. Targeting never sends one (token_kinds); the adapter refuses one handed to it anyway."""
    subscription = peer.subscribe()
    options = Options(push_type="background", priority="normal")
    delivery = web_delivery(subscription, message=Message(data={"sync": "inbox"}), options=options)

    result = await provider.send(delivery)

    assert (result.outcome, result.reason) == (Outcome.REJECTED, "UnsupportedPushType")
    assert peer.pushes_for(subscription) == []


async def test_largest_payload_fits_one_4096_byte_record_and_one_more_byte_is_refused(
    provider: WebPushProvider, peer: WebPushPeer
) -> None:
    subscription = peer.subscribe()

    def with_note(length: int) -> Delivery:
        return web_delivery(subscription, message=Message(title="t", data={"note": "x" * length}))

    base = len(encode_payload(build_payload(with_note(0))))
    largest = with_note(MAX_PAYLOAD_BYTES - base)
    assert len(encode_payload(build_payload(largest))) == MAX_PAYLOAD_BYTES

    assert (await provider.send(largest)).outcome is Outcome.DELIVERED
    [push] = peer.pushes_for(subscription)
    assert len(push.body) == 4096
    assert push.plaintext == encode_payload(build_payload(largest))

    too_large = with_note(MAX_PAYLOAD_BYTES - base + 1)
    with pytest.raises(PayloadRejected) as refused:
        provider.render(too_large)
    assert refused.value.reason == "PayloadTooLarge"
    result = await provider.send(too_large)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "PayloadTooLarge")
    dry_run = await provider.validate(too_large)
    assert (dry_run.outcome, dry_run.reason) == (Outcome.REJECTED, "PayloadTooLarge")
    assert len(peer.pushes_for(subscription)) == 1  # the refused ones never left


async def test_every_message_has_its_own_key_and_salt(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    delivery = web_delivery(subscription)

    for _ in range(2):
        assert (await provider.send(delivery)).outcome is Outcome.DELIVERED

    first, second = peer.pushes_for(subscription)
    assert first.plaintext == second.plaintext
    assert first.body[:16] != second.body[:16]  # salt
    assert first.body[21:86] != second.body[21:86]  # the sender's ephemeral public key


async def test_validate_builds_and_checks_without_contacting_the_push_service(
    provider: WebPushProvider, peer: WebPushPeer
) -> None:
    result = await provider.validate(web_delivery(peer.subscribe()))

    assert result.outcome is Outcome.DELIVERED
    assert peer.tcp_connections == 0


def test_the_peer_decrypts_rfc_8291_appendix_a_and_http_ece_reproduces_it() -> None:
    """The peer's own decryption is right (RFC 8291's example), and http-ece, called as the adapter calls it,
    produces the example's bytes from the example's keys and salt."""
    plaintext = b"When I grow up, I want to be a watermelon"
    receiver = ec.derive_private_key(int.from_bytes(b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")),
                                     ec.SECP256R1())
    sender = ec.derive_private_key(int.from_bytes(b64url_decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")),
                                   ec.SECP256R1())
    auth = b64url_decode("BTBZMqHH6r4Tts7J_aSIgg")
    body = b64url_decode(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl"
        "7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    )
    receiver_public = b64url_decode(
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    )

    assert decrypt_aes128gcm(body, receiver, auth) == plaintext
    assert http_ece.encrypt(plaintext, salt=body[:16], private_key=sender, dh=receiver_public, auth_secret=auth,
                            version="aes128gcm", rs=4096) == body


# ------------------------------------------------------------------------------------------------- VAPID


async def test_vapid_token_is_accepted_and_names_origin_subject_and_key(
    provider: WebPushProvider, peer: WebPushPeer, webpush_vapid_key: VapidKey
) -> None:
    subscription = peer.subscribe()
    before = int(time.time())

    assert (await provider.send(web_delivery(subscription))).outcome is Outcome.DELIVERED

    [push] = peer.pushes_for(subscription)
    assert push.vapid is not None and push.vapid.status is None
    assert push.headers["authorization"].startswith("vapid t=")
    assert push.vapid.key == webpush_vapid_key.public_key == provider.vapid_public_key
    claims = push.vapid.claims
    assert claims is not None
    assert claims["aud"] == peer.base_url
    assert claims["sub"] == SUBJECT
    assert before + VAPID_LIFETIME_SECONDS <= claims["exp"] <= int(time.time()) + VAPID_LIFETIME_SECONDS


async def test_subscription_restricted_to_our_key_accepts_and_to_another_key_is_an_auth_error(
    provider: WebPushProvider, peer: WebPushPeer, webpush_vapid_key: VapidKey, tmp_path: Any
) -> None:
    ours = peer.subscribe(application_server_key=webpush_vapid_key.public_key)
    theirs = peer.subscribe(application_server_key=make_vapid_key(tmp_path).public_key)

    assert (await provider.send(web_delivery(ours))).outcome is Outcome.DELIVERED
    result = await provider.send(web_delivery(theirs))

    # RFC 8292: 403 for a key the subscription was not made with. An auth error (the rule): the device
    # is kept, the provider pauses; a 403 says nothing sure about the subscription itself.
    assert (result.outcome, result.reason, result.status) == (Outcome.AUTH_ERROR, "Forbidden", 403)
    [refused] = peer.pushes_for(theirs)
    assert refused.problem == "k is not the key the subscription was made with"


async def test_vapid_token_is_cached_per_origin_and_signed_anew_before_it_expires(
    webpush_pki: tls.TestPki, open_provider: Callable[..., WebPushProvider]
) -> None:
    clock = FakeClock(int(time.time()))
    start = clock.now
    async with WebPushPeer(webpush_pki, clock=clock) as peer:
        provider = open_provider(clock=clock)
        here, there = peer.subscribe(), peer.subscribe(host="localhost")

        async def token_for(subscription: PeerSubscription) -> str:
            result = await provider.send(web_delivery(subscription))
            assert result.outcome is Outcome.DELIVERED, (result, peer.pushes[-1].problem)
            vapid = peer.pushes_for(subscription)[-1].vapid
            assert vapid is not None and vapid.token is not None
            return vapid.token

        first = await token_for(here)
        assert await token_for(here) == first
        clock.now = start + VAPID_LIFETIME_SECONDS - 3600 - 1  # just over an hour left: still reused
        assert await token_for(here) == first
        clock.now = start + VAPID_LIFETIME_SECONDS - 3600 + 60  # under an hour left: a new one
        renewed = await token_for(here)
        assert renewed != first
        assert await token_for(here) == renewed

        other = await token_for(there)
        assert other not in (first, renewed)
        claims = [push.vapid.claims for push in peer.pushes if push.vapid is not None]
        assert {c["aud"] for c in claims if c} == {peer.base_url, f"https://localhost:{peer.port}"}
        # The peer takes a token until its exp: an hour later the first one would have been refused.
        clock.now = start + VAPID_LIFETIME_SECONDS + 1
        assert await token_for(here) == renewed


# ----------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("ttl_seconds", "expires_in", "header"),
    [
        (3600, 3600.0, "3600"),
        (0, 0.0, "0"),  # deliver now or never
        (60, -5.0, "0"),  # already expired while queued: the push service may still try once
        (None, None, str(DEFAULT_TTL_SECONDS)),
        (120, None, "120"),  # no request time known: counted from now
    ],
)
async def test_ttl_header_is_what_is_left_until_expiry(
    open_provider: Callable[..., WebPushProvider],
    peer: WebPushPeer,
    ttl_seconds: int | None,
    expires_in: float | None,
    header: str,
) -> None:
    clock = FakeClock()
    provider = open_provider(clock=clock)
    subscription = peer.subscribe()
    expires_at = None if expires_in is None else clock.now + expires_in
    delivery = web_delivery(subscription, options=Options(ttl_seconds=ttl_seconds), expires_at=expires_at)

    assert (await provider.send(delivery)).outcome is Outcome.DELIVERED

    [push] = peer.pushes_for(subscription)
    assert push.headers["ttl"] == header


@pytest.mark.parametrize(
    ("push_type", "priority", "urgency"),
    [("alert", "high", "high"), ("alert", "normal", "normal")],
)
async def test_urgency_follows_priority(
    provider: WebPushProvider, peer: WebPushPeer, push_type: str, priority: str, urgency: str
) -> None:
    subscription = peer.subscribe()
    message = Message(data={"k": "v"}) if push_type == "background" else Message(title="t")
    options = Options(push_type=push_type, priority=priority)  # type: ignore[arg-type]

    assert (await provider.send(web_delivery(subscription, message=message, options=options))).outcome is (
        Outcome.DELIVERED
    )

    assert peer.pushes_for(subscription)[0].headers["urgency"] == urgency


@pytest.mark.parametrize(
    ("collapse_key", "verbatim"),
    [
        ("orders-7", True),
        ("A_b-" + "x" * 28, True),  # exactly 32 characters of the alphabet
        ("x" * 33, False),
        ("news:sports/today", False),
        ("überall", False),
        ("a b", False),
    ],
)
async def test_topic_is_the_collapse_key_or_its_hash(
    provider: WebPushProvider, peer: WebPushPeer, collapse_key: str, verbatim: bool
) -> None:
    subscription = peer.subscribe()

    result = await provider.send(web_delivery(subscription, options=Options(collapse_key=collapse_key)))

    assert result.outcome is Outcome.DELIVERED, peer.pushes[-1].problem  # the peer found the Topic valid
    [push] = peer.pushes_for(subscription)
    sent = push.headers["topic"]
    assert sent == topic(collapse_key) == topic(collapse_key)  # deterministic
    if verbatim:
        assert sent == collapse_key
    else:
        assert len(sent) == 32 and sent != collapse_key
    assert push.payload["tag"] == collapse_key  # the service worker gets the key itself


async def test_no_collapse_key_no_topic(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    assert (await provider.send(web_delivery(subscription))).outcome is Outcome.DELIVERED
    assert "topic" not in peer.pushes_for(subscription)[0].headers


def test_different_collapse_keys_get_different_topics() -> None:
    keys = ["x" * 33, "x" * 34, "news:a", "news:b", "a b", "a  b"]
    assert len({topic(key) for key in keys}) == len(keys)


# ---------------------------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("status", "retry_after", "outcome", "reason", "expected_retry_after"),
    [
        (201, None, Outcome.DELIVERED, "", None),
        (202, None, Outcome.DELIVERED, "", None),
        (404, None, Outcome.INVALID_TOKEN, "NotFound", None),
        (410, None, Outcome.INVALID_TOKEN, "Gone", None),
        (413, None, Outcome.REJECTED, "PayloadTooLarge", None),
        (429, 30, Outcome.RETRYABLE, "TooManyRequests", 30.0),
        (429, None, Outcome.RETRYABLE, "TooManyRequests", None),
        (500, None, Outcome.RETRYABLE, "http_500", None),
        (502, None, Outcome.RETRYABLE, "http_502", None),
        (503, 7, Outcome.RETRYABLE, "http_503", 7.0),
        (401, None, Outcome.AUTH_ERROR, "Unauthorized", None),
        (403, None, Outcome.AUTH_ERROR, "Forbidden", None),
        (400, None, Outcome.REJECTED, "BadRequest", None),
        (415, None, Outcome.REJECTED, "http_415", None),
    ],
)
async def test_each_answer_is_classified(
    provider: WebPushProvider,
    peer: WebPushPeer,
    status: int,
    retry_after: int | None,
    outcome: Outcome,
    reason: str,
    expected_retry_after: float | None,
) -> None:
    subscription = peer.subscribe()
    peer.script(subscription, status=status, retry_after=retry_after)

    result = await provider.send(web_delivery(subscription))

    assert (result.outcome, result.reason, result.status) == (outcome, reason, status)
    assert result.retry_after == expected_retry_after
    assert result.invalid_since is None  # push services never say when a subscription died
    [push] = peer.pushes_for(subscription)
    assert push.problem is None  # the request itself was valid: the script answered
    await assert_still_works(provider, peer)


async def test_retry_after_as_http_date(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    peer.script(subscription, status=503, retry_after=email.utils.formatdate(time.time() + 120, usegmt=True))

    result = await provider.send(web_delivery(subscription))

    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after is not None and 100 < result.retry_after <= 120


async def test_unknown_subscription_is_invalid_token(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    peer.unsubscribe(subscription)

    result = await provider.send(web_delivery(subscription))

    assert (result.outcome, result.reason, result.status, result.invalid_since) == (
        Outcome.INVALID_TOKEN, "NotFound", 404, None
    )


async def test_redirects_are_not_followed(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription, elsewhere = peer.subscribe(), peer.subscribe()
    peer.script(subscription, status=307, location=elsewhere.endpoint)

    result = await provider.send(web_delivery(subscription))

    assert (result.outcome, result.reason) == (Outcome.REJECTED, "http_307")
    assert peer.pushes_for(elsewhere) == []


async def test_no_answer_in_time_is_retryable_timeout(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    provider = open_provider(send_timeout=1.0)
    subscription = peer.subscribe()
    peer.script(subscription, action="hang")

    result = await provider.send(web_delivery(subscription))

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "timeout")
    await assert_still_works(provider, peer)


async def test_connection_dropped_without_answer_is_retryable(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    peer.script(subscription, action="close")

    result = await provider.send(web_delivery(subscription))

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")
    await assert_still_works(provider, peer)


async def test_nothing_listening_is_retryable_connection_error(provider: WebPushProvider) -> None:
    async with TcpCounter() as counter:
        port = counter.port
    # The port is closed again: connecting is refused.
    result = await provider.send(web_delivery(make_subscription(f"127.0.0.1:{port}").web_subscription))

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "connection_error")


async def test_tls_is_verified(open_provider: Callable[..., WebPushProvider], peer: WebPushPeer) -> None:
    provider = open_provider(ca_file=None)  # the system CAs only: the test CA is not trusted

    result = await provider.send(web_delivery(peer.subscribe()))

    assert (result.outcome, result.reason) == (Outcome.RETRYABLE, "tls_error")
    assert peer.pushes == []


async def test_device_without_subscription_is_invalid_token(provider: WebPushProvider) -> None:
    result = await provider.send(web_delivery(None))

    assert (result.outcome, result.reason) == (Outcome.INVALID_TOKEN, "NoSubscription")


async def test_keys_that_are_not_a_p256_point_are_invalid_token(provider: WebPushProvider, peer: WebPushPeer) -> None:
    subscription = peer.subscribe()
    off_curve = b64url(b"\x04" + b"\x01" * 64)  # the right shape, not a point on the curve
    broken = WebSubscription(subscription.endpoint, off_curve, subscription.auth)

    result = await provider.send(web_delivery(broken))

    assert (result.outcome, result.reason) == (Outcome.INVALID_TOKEN, "InvalidSubscriptionKeys")
    assert peer.tcp_connections == 0


# ------------------------------------------------------------------------------------------------ pooling


async def test_many_sends_reuse_a_few_connections(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    provider = open_provider(max_connections_per_origin=4)
    subscriptions = [peer.subscribe() for _ in range(40)]

    results = await asyncio.gather(*(provider.send(web_delivery(s)) for s in subscriptions))

    assert all(r.outcome is Outcome.DELIVERED for r in results), results
    assert 1 <= peer.connections_per_origin()[peer.base_url] <= 4
    opened = peer.tcp_connections
    assert opened <= 4
    for subscription in subscriptions[:20]:
        assert (await provider.send(web_delivery(subscription))).outcome is Outcome.DELIVERED
    assert peer.tcp_connections == opened  # one after another: the pooled connections carry them all


async def test_two_origins_have_separate_pools(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    provider = open_provider(max_connections_per_origin=2)
    by_ip = [peer.subscribe() for _ in range(10)]
    by_name = [peer.subscribe(host="localhost") for _ in range(10)]

    results = await asyncio.gather(*(provider.send(web_delivery(s)) for s in by_ip + by_name))

    assert all(r.outcome is Outcome.DELIVERED for r in results), results
    per_origin = peer.connections_per_origin()
    assert set(per_origin) == {peer.base_url, f"https://localhost:{peer.port}"}
    assert all(1 <= count <= 2 for count in per_origin.values()), per_origin
    assert all(len(origins) == 1 for origins in peer.origins_per_connection().values())


async def test_an_origin_that_never_answers_does_not_hold_back_others(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    provider = open_provider(max_connections_per_origin=2, send_timeout=30.0)
    async with TcpCounter() as stuck:  # accepts TCP and never completes the TLS handshake
        stuck_subscriptions = [make_subscription(f"127.0.0.1:{stuck.port}") for _ in range(6)]
        waiting = [asyncio.create_task(provider.send(web_delivery(s))) for s in stuck_subscriptions]
        await asyncio.sleep(0)

        results = await asyncio.gather(*(provider.send(web_delivery(peer.subscribe())) for _ in range(10)))

        assert all(r.outcome is Outcome.DELIVERED for r in results), results
        assert not any(task.done() for task in waiting)
        assert stuck.accepted <= 2  # its own pool limit, nothing more
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


# --------------------------------------------------------------------------------------------------- SSRF


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "10.1.2.3", "192.168.0.10", "100.64.0.1", "[fd00::1]", "[fe80::1]", "[::ffff:10.1.2.3]"],
)
async def test_internal_address_literals_are_refused_before_connecting(
    provider: WebPushProvider, host: str
) -> None:
    endpoint = f"https://{host}/push/abc"
    # The rule itself first: if it ever let these through, the test stops here instead of connecting.
    assert endpoint_problem(endpoint, ["127.0.0.1", "localhost"]) is not None
    subscription = make_subscription("x")  # keys only
    delivery = web_delivery(WebSubscription(endpoint, subscription.p256dh, subscription.auth))

    result = await provider.send(delivery)

    assert (result.outcome, result.reason) == (Outcome.INVALID_TOKEN, "EndpointNotAllowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "127.1", "2130706433", "0x7f.1", "localhost"])
async def test_loopback_is_refused_without_any_connection_unless_allowed(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer, host: str
) -> None:
    provider = open_provider(allowed_hosts=())
    subscription = peer.subscribe()
    endpoint = f"https://{host}:{peer.port}/push/{subscription.id}"

    result = await provider.send(web_delivery(WebSubscription(endpoint, subscription.p256dh, subscription.auth)))

    assert (result.outcome, result.reason) == (Outcome.INVALID_TOKEN, "EndpointNotAllowed")
    assert peer.tcp_connections == 0


async def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time(
    open_provider: Callable[..., WebPushProvider],
) -> None:
    resolver = StaticResolver({"push.rebind.test": ["127.0.0.1"]})
    provider = open_provider(allowed_hosts=(), resolver=lambda: resolver)
    keys = make_subscription("x")
    async with TcpCounter() as listener:
        endpoint = f"https://push.rebind.test:{listener.port}/push/abc"
        assert endpoint_problem(endpoint) is None  # a name: registration cannot tell, the connection must

        result = await provider.send(web_delivery(WebSubscription(endpoint, keys.p256dh, keys.auth)))

        # Refused on the resolved address; the device is kept (what a name resolves to is the network's doing).
        assert (result.outcome, result.reason) == (Outcome.REJECTED, "EndpointResolvesInside")
        assert resolver.asked == ["push.rebind.test"]
        assert listener.accepted == 0


async def test_the_machines_own_name_is_refused_when_it_resolves_to_loopback(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    """The system resolver's answer (no test resolver): the machine's host name, when /etc/hosts maps it to a
    loopback address as container images do."""
    name = socket.gethostname().lower()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip(f"{name} does not resolve here")
    if not addresses or not all(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name} resolves to {sorted(addresses)}, not only to loopback")
    provider = open_provider(allowed_hosts=())
    subscription = peer.subscribe()
    endpoint = f"https://{name}:{peer.port}/push/{subscription.id}"

    result = await provider.send(web_delivery(WebSubscription(endpoint, subscription.p256dh, subscription.auth)))

    assert (result.outcome, result.reason) == (Outcome.REJECTED, "EndpointResolvesInside")
    assert peer.tcp_connections == 0


async def test_an_allowed_host_reaches_the_push_service(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    """Through the system resolver: "localhost" resolves to loopback and is listed in allowed_hosts."""
    provider = open_provider(allowed_hosts=("localhost",))
    subscription = peer.subscribe(host="localhost")

    result = await provider.send(web_delivery(subscription))

    assert result.outcome is Outcome.DELIVERED, result
    assert peer.pushes_for(subscription)[0].payload["title"] == "Hi"


async def test_the_same_name_connects_only_when_allowed(open_provider: Callable[..., WebPushProvider]) -> None:
    keys = make_subscription("x")
    async with TcpCounter() as listener:
        endpoint = f"https://push.internal.test:{listener.port}/push/abc"
        delivery = web_delivery(WebSubscription(endpoint, keys.p256dh, keys.auth))
        names = {"push.internal.test": ["127.0.0.1"]}
        refusing = open_provider(allowed_hosts=(), resolver=lambda: StaticResolver(names))
        allowing = open_provider(allowed_hosts=("push.internal.test",), send_timeout=0.5,
                                 resolver=lambda: StaticResolver(names))

        refused = await refusing.send(delivery)
        assert (refused.outcome, refused.reason, listener.accepted) == (
            Outcome.REJECTED, "EndpointResolvesInside", 0
        )
        allowed = await allowing.send(delivery)
        assert (allowed.outcome, allowed.reason) == (Outcome.RETRYABLE, "timeout")  # it never answers TLS
        assert listener.accepted == 1


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        (["93.184.216.34"], False),
        (["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], False),
        (["93.184.216.34", "10.0.0.7"], True),  # one internal address spoils the answer
        (["::1"], True),
        (["169.254.169.254"], True),
        (["::ffff:192.168.1.1"], True),
    ],
)
async def test_guarded_resolver_refuses_any_internal_address(answer: list[str], refused: bool) -> None:
    guard = GuardedResolver(frozenset(), StaticResolver({"push.example.com": answer}))
    if refused:
        with pytest.raises(EndpointRefused):
            await guard.resolve("push.example.com", 443)
    else:
        assert [r["host"] for r in await guard.resolve("push.example.com", 443)] == answer
    allowed = GuardedResolver(frozenset({"push.example.com"}), StaticResolver({"push.example.com": answer}))
    assert [r["host"] for r in await allowed.resolve("push.example.com", 443)] == answer


async def test_logs_never_name_the_endpoint(
    open_provider: Callable[..., WebPushProvider], peer: WebPushPeer
) -> None:
    provider = open_provider(send_timeout=1.0)
    gone, stuck, forbidden = peer.subscribe(), peer.subscribe(), peer.subscribe()
    peer.script(gone, status=410)
    peer.script(stuck, action="hang")
    peer.script(forbidden, status=403)
    refused = WebSubscription("https://10.9.8.7/push/secret-subscription-id", gone.p256dh, gone.auth)

    with structlog.testing.capture_logs() as logs:
        for subscription in (gone, stuck, forbidden, refused):
            await provider.send(web_delivery(subscription, token="web:" + "t" * 43))

    assert logs, "refusals and auth errors are logged"
    text = repr(logs)
    for subscription in (gone, stuck, forbidden):
        assert subscription.id not in text
    assert "secret-subscription-id" not in text
    assert "t" * 43 not in text
