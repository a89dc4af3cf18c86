"""Web Push adapter: RFC 8030 delivery, RFC 8291 (aes128gcm) payload encryption, RFC 8292 (VAPID) authentication.

The payload and its headers: providers/webpush_payload.py. Where it may connect: providers/webpush_guard.py.

Libraries (benchmarks/webpush_crypto_cost.py measures them)
    http-ece encrypts (ECDH with a fresh P-256 key per message, HKDF, AES-GCM: RFC 8188/8291) and py-vapid
    signs the VAPID JWT (ES256). pywebpush is not used although it wraps both: it signs a new JWT for every
    message, copies and re-decodes the subscription each time, sends through ``requests`` or a new aiohttp
    session per call unless handed one, and throws its exceptions on any non-2xx answer. Encryption is
    pure CPU (about 100-200 us, no I/O), so it runs on the event loop: a worker thread would cost more to
    hand over than it saves.

Transport
    aiohttp over HTTP/1.1 (every push service accepts it; aiohttp has no HTTP/2 client), keep-alive
    connections pooled per origin (scheme, host, port: each browser vendor's push service is one) up to
    ``max_connections_per_origin``, with no total limit, so that an origin that stops answering holds
    only its own connections and never other origins' sends: each attempt ends after ``send_timeout``.
    TLS is verified always (system CAs plus ``ca_file``). Redirects are not followed and proxies from the
    environment are not used: either would send the request to an address nobody checked.

Logging: an endpoint's path names the subscription (whoever has it can push to the browser), so logs carry
the origin and the masked device token, never the endpoint.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import http_ece
from aiohttp.abc import AbstractResolver
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from py_vapid import Vapid02, VapidException
from yarl import URL

from pushsvc.config import WebPushSettings
from pushsvc.logs import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, bounded_attempt
from pushsvc.providers.webpush_guard import EndpointRefused, GuardedResolver, literal_problem
from pushsvc.providers.webpush_payload import (
    ANSWERS,
    MAX_PAYLOAD_BYTES,
    build_payload,
    classify,
    encode_payload,
    encrypt,
    payload_json,
    request_headers,
    topic,
)
from pushsvc.subscriptions import endpoint_problem
from pushsvc.timeouts import FixedTimeouts

if TYPE_CHECKING:
    pass

log = get_logger(__name__)

# --------------------------------------------------------------------------------------------------- VAPID

VAPID_LIFETIME_SECONDS = 12 * 3600  # RFC 8292 section 2: exp no more than 24 h ahead; 12 h leaves room
VAPID_RENEW_SECONDS = 3600  # sign anew when less than this remains
MAX_VAPID_ORIGINS = 1024  # endpoints are user-supplied: the cache of tokens per origin must stay bounded


@dataclass(frozen=True, slots=True)
class _Token:
    authorization: str
    expires_at: float


class VapidSigner:
    """ES256 VAPID tokens (py-vapid), one per origin, reused until VAPID_RENEW_SECONDS before they expire."""

    def __init__(self, key_file: str, subject: str, clock: Callable[[], float]) -> None:
        key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the VAPID key must be an EC P-256 private key")
        # no-strict: py-vapid's own "sub" check refuses https URLs with a path, which RFC 8292 allows; the
        # subject was checked at start (config._check_webpush).
        self._vapid = Vapid02(key, conf={"no-strict": True})
        self._subject = subject
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public_key = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def authorization(self, origin: str) -> str:
        """The Authorization header value for a push to `origin` (raises VapidException for an origin
        py-vapid cannot put in "aud", e.g. an IPv6 literal)."""
        now = self._clock()
        token = self._tokens.get(origin)
        if token is None or token.expires_at - now < VAPID_RENEW_SECONDS:
            expires_at = int(now) + VAPID_LIFETIME_SECONDS
            claims = {"aud": origin, "exp": expires_at, "sub": self._subject}
            token = _Token(self._vapid.sign(claims)["Authorization"], expires_at)
            if len(self._tokens) >= MAX_VAPID_ORIGINS:
                self._tokens.clear()
            self._tokens[origin] = token
        return token.authorization


# ------------------------------------------------------------------------------------------------ provider

# Answers pushsvc reads to the end (to reuse the connection); a longer one is dropped with its connection.
MAX_ANSWER_BYTES = 2048


@dataclass(frozen=True, slots=True)
class _Push:
    url: URL
    origin: str
    headers: dict[str, str]
    body: bytes


class WebPushProvider(Provider):
    """Web Push for one pushsvc app: its VAPID key, and one connection pool per push service origin."""

    name = "webpush"

    def __init__(
        self,
        app_id: str,
        settings: WebPushSettings,
        send_timeout: float,
        clock: Callable[[], float] = time.time,
        *,
        resolver: Callable[[], AbstractResolver] | None = None,
    ) -> None:
        """`clock`: expiry times (TTL) and VAPID tokens are counted on it. `resolver`: makes the name resolver
        that GuardedResolver asks (default aiohttp's ThreadedResolver: the system's getaddrinfo)."""
        super().__init__(app_id)
        self._settings = settings
        self._timeouts = FixedTimeouts(send_timeout)  # every send bounded by it, one loop timer for all
        self._clock = clock
        self._allowed_hosts = frozenset(settings.allowed_hosts)
        self._vapid = VapidSigner(settings.vapid_private_key_file, settings.subject, clock)
        self._make_resolver = resolver or aiohttp.ThreadedResolver
        # System CAs (OpenSSL's default paths) plus ca_file: create_default_context(cafile=...) alone would
        # trust only the file.
        self._ssl = ssl.create_default_context()
        if settings.ca_file:
            self._ssl.load_verify_locations(cafile=settings.ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    @property
    def vapid_public_key(self) -> str:
        """The applicationServerKey browsers subscribe with (base64url of the uncompressed point)."""
        return self._vapid.public_key

    async def start(self) -> None:
        self._client()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._resolver = GuardedResolver(self._allowed_hosts, self._make_resolver())
            connector = aiohttp.TCPConnector(
                limit=0,  # no total: one stuck origin must not take the connections others need
                limit_per_host=self._settings.max_connections_per_origin,
                ssl=self._ssl,
                resolver=self._resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # no HTTP(S)_PROXY: a proxy would connect to addresses we never checked
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),  # send() bounds the whole attempt
                headers={"User-Agent": "pushsvc"},
            )
        return self._session

    def render(self, delivery: Delivery) -> Rendered:
        payload = build_payload(delivery)
        encode_payload(payload)  # the size check
        return Rendered(request_headers(delivery, self._clock()), payload)

    async def validate(self, delivery: Delivery) -> SendResult:
        """A dry run: everything short of the POST (the subscription, where it points, the payload encrypted
        for its keys, the VAPID token for its origin), so a device a send would refuse is not `validated`."""
        try:
            push = self._prepare(delivery)
        except PayloadRejected as exc:
            return SendResult(Outcome.REJECTED, exc.reason)
        return push if isinstance(push, SendResult) else SendResult(Outcome.DELIVERED)

    async def send(self, delivery: Delivery) -> SendResult:
        device = mask_token(delivery.device.token)
        try:
            push = self._prepare(delivery)
        except PayloadRejected as exc:
            log.warning("webpush_payload_rejected", app=self.app_id, device=device, reason=exc.reason)
            return SendResult(Outcome.REJECTED, exc.reason)
        if isinstance(push, SendResult):
            return push
        result = await bounded_attempt(
            self._post(push),
            self._timeouts,
            lambda exc: log.error(
                "webpush_send_failed", app=self.app_id, origin=push.origin, device=device, error=_short(exc),
                exc_info=True,
            ),
        )
        if result.outcome is Outcome.AUTH_ERROR or result.reason == "EndpointNotAllowed":
            log.warning("webpush_refused", app=self.app_id, origin=push.origin, device=device, status=result.status,
                        reason=result.reason)
        return result

    def _prepare(self, delivery: Delivery) -> _Push | SendResult:
        """The request for one delivery, or the outcome that makes sending it pointless."""
        subscription = delivery.device.subscription
        device = mask_token(delivery.device.token)
        if subscription is None:
            log.warning("webpush_no_subscription", app=self.app_id, device=device)
            return SendResult(Outcome.INVALID_TOKEN, "NoSubscription")
        try:
            # yarl's reading, which aiohttp connects by: host lower-cased and IDNA-encoded (so is "aud").
            url = URL(subscription.endpoint)
            origin = str(url.origin())
        except ValueError:
            return self._refused(device, "", "not a URL aiohttp can use")
        problem = endpoint_problem(subscription.endpoint, self._allowed_hosts) or literal_problem(
            url, self._allowed_hosts
        )
        if problem is not None:
            return self._refused(device, url.raw_host or "", problem)
        headers = request_headers(delivery, self._clock())
        plaintext = encode_payload(build_payload(delivery))
        try:
            body = encrypt(plaintext, subscription)
        except (ValueError, http_ece.ECEException) as exc:
            log.warning("webpush_bad_subscription_keys", app=self.app_id, device=device, error=_short(exc))
            return SendResult(Outcome.INVALID_TOKEN, "InvalidSubscriptionKeys")
        try:
            headers["Authorization"] = self._vapid.authorization(origin)
        except VapidException as exc:
            log.warning("webpush_vapid_refused", app=self.app_id, origin=origin, device=device, error=_short(exc))
            return SendResult(Outcome.REJECTED, "UnsupportedEndpoint")
        return _Push(url, origin, headers, body)

    def _refused(self, device: str, host: str, problem: str) -> SendResult:
        log.warning("webpush_endpoint_refused", app=self.app_id, host=host, device=device, problem=problem)
        return SendResult(Outcome.INVALID_TOKEN, "EndpointNotAllowed")

    async def _post(self, push: _Push) -> SendResult:
        try:
            async with self._client().post(
                push.url, data=push.body, headers=push.headers, allow_redirects=False
            ) as response:
                await _drain(response)
                return classify(response.status, response.headers, response.headers.get("Location"))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EndpointRefused):
                # The name resolved inside: refused, but the device is kept (REJECTED). What a name resolves
                # to is the network's doing (split-horizon DNS, a filtering resolver's block page, DNS64 with a
                # local prefix), and may be every subscription of a push service at once: deactivating them all
                # for good would be the wrong answer to a DNS problem. Counted and logged per reason.
                log.warning("webpush_endpoint_resolves_inside", app=self.app_id, origin=push.origin)
                return SendResult(Outcome.REJECTED, "EndpointResolvesInside")
            if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
                return SendResult(Outcome.RETRYABLE, "tls_error")
            return SendResult(Outcome.RETRYABLE, "connection_error")
        except aiohttp.InvalidURL:
            return SendResult(Outcome.INVALID_TOKEN, "EndpointNotAllowed")
        except (aiohttp.ClientError, OSError):
            # The connection broke before the whole answer came (reset, closed, malformed HTTP).
            return SendResult(Outcome.RETRYABLE, "connection_error")

    async def close(self) -> None:
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()  # the connector closes only resolvers it made itself


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the (unused) answer body so that the connection goes back to the pool; a long one is not worth
    reading: the connection is dropped instead."""
    length = response.content_length
    if length is not None and length <= MAX_ANSWER_BYTES:
        await response.read()
        return
    await response.content.read(MAX_ANSWER_BYTES)
    if not response.content.at_eof():
        response.close()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


__all__ = [
    "ANSWERS",
    "MAX_PAYLOAD_BYTES",
    "EndpointRefused",
    "GuardedResolver",
    "VapidSigner",
    "WebPushProvider",
    "build_payload",
    "classify",
    "encode_payload",
    "encrypt",
    "payload_json",
    "request_headers",
    "topic",
]
