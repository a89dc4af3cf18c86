"""Web Push adapter: RFC 8030 delivery, RFC 8291 (aes128gcm) payload encryption, RFC 8292 (VAPID) authentication.

The payload
    Every push carries one JSON document (UTF-8, compact), which the service worker reads with
    ``event.data.json()``::

        {
          "notification_id": "n-42",          always: the pushsvc notification id
          "type": "alert",                    always: "alert" (options.push_type)
          "title": "Hi", "body": "there",     alerts only, each when set: the device locale's text
          "badge": 3, "sound": "default",     alerts only, each when set
          "tag": "orders-7",                  when options.collapse_key is set: for showNotification({tag}),
                                              so that a newer notification replaces an older one on screen
          "data": {"order": 42}               always: message.data with its JSON types ({} when none)
        }

    A service worker must show a notification for every push it receives (browsers subscribe with
    ``userVisibleOnly: true``), so background pushes are not sent to web subscriptions (token_kinds).

    The document is encrypted for each subscription into one aes128gcm record, which must fit the 4096 bytes
    every push service accepts (RFC 8291 section 4): 86 bytes of header (salt, record size, our ephemeral
    public key) and 17 of padding delimiter and tag leave MAX_PAYLOAD_BYTES (3993) for the JSON. A larger
    one is refused before anything is sent (PayloadRejected / REJECTED, reason "PayloadTooLarge").

The request headers
    * TTL: seconds the push service may keep the message for an offline browser: what is left until
      ``delivery.expires_at`` (0 for ttl_seconds 0: deliver now or never), else DEFAULT_TTL_SECONDS. RFC 8030
      requires the header on every request.
    * Urgency (RFC 8030 section 5.3): "high" for priority high, "normal" otherwise; "low" or "very-low"
      would let the browser hold the push until the device is on power or Wi-Fi, a delay the API never
      offered and the caller cannot ask for.
    * Topic (RFC 8030 section 5.4) from options.collapse_key: at most 32 characters of the base64url
      alphabet. A collapse key that is one already is sent as it is; any other is sent as the first 32
      characters of the base64url SHA-256 of the key (192 bits: no two keys in practice share one, and every
      replica and restart maps a key alike, which is all collapsing needs).
    * Content-Encoding: aes128gcm; Authorization: ``vapid t=<JWT>,k=<public key>`` (RFC 8292).

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

Where pushsvc may connect (SSRF)
    Endpoints come from whoever registers a device. A host name is resolved by ``GuardedResolver``, which
    refuses the whole answer when any address is loopback, private, link-local or otherwise internal
    (subscriptions.address_refused): the check applies to exactly the addresses connected to, so a name
    that changes its answer later (DNS rebinding) gains nothing. An address literal never reaches a
    resolver, so it is checked, as aiohttp reads it, before the request. Hosts in ``allowed_hosts`` are
    exempt. An endpoint whose URL itself names an internal address is INVALID_TOKEN ("EndpointNotAllowed",
    the device deactivated: no real push service is reached so); one whose name resolves inside is REJECTED
    ("EndpointResolvesInside", the device kept: what a name resolves to is the network's doing, and may be
    true of a whole push service's subscriptions at once, which must not all be deactivated for good).

Logging: an endpoint's path names the subscription (whoever has it can push to the browser), so logs carry
the origin and the masked device token, never the endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import http_ece
import orjson
from aiohttp.abc import AbstractResolver
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from py_vapid import Vapid02, VapidException
from yarl import URL

from pushsvc.config import WebPushSettings
from pushsvc.logging import get_logger, mask_token
from pushsvc.model import MAX_TTL_SECONDS, Outcome, WebSubscription
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, parse_retry_after
from pushsvc.subscriptions import address_refused, base64url_decode, endpoint_problem

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

log = get_logger(__name__)

# ------------------------------------------------------------------------------------------------- payload

# RFC 8291 section 4: one record, and a push service need not accept more than 4096 bytes of it.
MAX_RECORD_BYTES = 4096
# aes128gcm header (RFC 8188 section 2.1): salt (16), record size (4), key id length (1), key id = our
# uncompressed P-256 public key (65).
_HEADER_BYTES = 16 + 4 + 1 + 65
# Per record: the padding delimiter (1) and the AES-GCM tag (16).
_RECORD_OVERHEAD = 1 + 16
MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES - _HEADER_BYTES - _RECORD_OVERHEAD
# Without an expiry the push service keeps the message as long as FCM keeps one (4 weeks).
DEFAULT_TTL_SECONDS = MAX_TTL_SECONDS
TOPIC_LENGTH = 32
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# What token_kinds routes to webpush: alerts only. Browsers subscribe with userVisibleOnly (Chrome requires
# it), so a push the service worker shows nothing for still shows a generic notification: no silent pushes.
PUSH_TYPES = ("alert",)


def build_payload(delivery: Delivery) -> dict[str, Any]:
    """The JSON document the service worker receives (the shape in the module docstring)."""
    message, options = delivery.message, delivery.options
    if options.push_type not in PUSH_TYPES:
        raise PayloadRejected("UnsupportedPushType", f"web push takes {' and '.join(PUSH_TYPES)} pushes")
    payload: dict[str, Any] = {"notification_id": delivery.notification_id, "type": options.push_type}
    if options.push_type == "alert":
        text = message.text_for(delivery.device.locale)
        for key, value in (("title", text.title), ("body", text.body), ("badge", message.badge),
                           ("sound", message.sound)):
            if value is not None:
                payload[key] = value
    if options.collapse_key:
        payload["tag"] = options.collapse_key
    payload["data"] = dict(message.data)
    return payload


def payload_json(payload: Mapping[str, Any]) -> bytes:
    """The plaintext that is encrypted, whatever its size (intake measures it: ingest/payload_limits.py)."""
    return orjson.dumps(payload)


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The plaintext that is encrypted; raises PayloadRejected when its record would not fit 4096 bytes."""
    try:
        plaintext = payload_json(payload)
    except TypeError as exc:  # an integer orjson cannot hold (intake refuses these; a Python caller may not)
        raise PayloadRejected("InvalidPayload", str(exc)) from exc
    if len(plaintext) > MAX_PAYLOAD_BYTES:
        raise PayloadRejected(
            "PayloadTooLarge",
            f"{len(plaintext)} bytes of JSON, over the {MAX_PAYLOAD_BYTES} that fit one {MAX_RECORD_BYTES}-byte "
            "encrypted record",
        )
    return plaintext


def ttl_seconds(delivery: Delivery, now: float) -> int:
    if delivery.options.ttl_seconds == 0:
        return 0
    if delivery.expires_at is not None:
        return max(0, int(delivery.expires_at - now))
    if delivery.options.ttl_seconds is not None:  # no request time known: count from now
        return delivery.options.ttl_seconds
    return DEFAULT_TTL_SECONDS


def topic(collapse_key: str) -> str:
    """The Topic header for a collapse key (the rule in the module docstring)."""
    if _TOPIC.match(collapse_key):
        return collapse_key
    digest = hashlib.sha256(collapse_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:TOPIC_LENGTH]


def request_headers(delivery: Delivery, now: float) -> dict[str, str]:
    """The push request's headers, without credentials (no Authorization)."""
    options = delivery.options
    headers = {
        "TTL": str(ttl_seconds(delivery, now)),
        "Urgency": "high" if options.priority == "high" else "normal",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
    }
    if options.collapse_key:
        headers["Topic"] = topic(options.collapse_key)
    return headers


def encrypt(plaintext: bytes, subscription: WebSubscription) -> bytes:
    """One aes128gcm record for the subscription (a fresh ECDH key and salt per message); raises ValueError
    (or http_ece.ECEException) when the subscription's keys are unusable, e.g. p256dh not on the curve."""
    return http_ece.encrypt(
        plaintext,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=base64url_decode(subscription.p256dh),
        auth_secret=base64url_decode(subscription.auth),
        version="aes128gcm",
        rs=MAX_RECORD_BYTES,
    )


# ------------------------------------------------------------------------------------------ classification

# Push service answers (RFC 8030, RFC 8292 section 4) -> outcome class and reason. Other 2xx: delivered;
# other 4xx (and 3xx: redirects are not followed): REJECTED; 5xx: RETRYABLE. Retry-After is honoured on
# every retryable answer.
ANSWERS: dict[int, tuple[Outcome, str]] = {
    400: (Outcome.REJECTED, "BadRequest"),  # a header or the body refused: resending cannot help
    401: (Outcome.AUTH_ERROR, "Unauthorized"),  # VAPID token missing, malformed, expired or badly signed
    # The push service refuses our VAPID credential for this subscription (RFC 8292 section 4.2: a key other
    # than the one it was made with; Apple's service also answers 403 BadJwtToken for a subject it refuses).
    # An auth error: the device is kept (a 403 says nothing sure about the subscription) and the provider
    # pauses. After a VAPID key rotation every subscription made before it answers so: the web app must
    # subscribe again with the new applicationServerKey (README, runbook).
    403: (Outcome.AUTH_ERROR, "Forbidden"),
    404: (Outcome.INVALID_TOKEN, "NotFound"),  # no such subscription (unknown or expired)
    410: (Outcome.INVALID_TOKEN, "Gone"),  # the subscription expired or the user unsubscribed
    413: (Outcome.REJECTED, "PayloadTooLarge"),
    429: (Outcome.RETRYABLE, "TooManyRequests"),  # rate limited: wait Retry-After
}


def classify(status: int, headers: Mapping[str, str], location: str | None = None) -> SendResult:
    """The outcome of one push service answer. Push services do not say when a subscription died, so an
    invalid token's ``invalid_since`` stays None."""
    if 200 <= status < 300:
        return SendResult(Outcome.DELIVERED, status=status, provider_id=location)
    outcome, reason = ANSWERS.get(status) or (
        (Outcome.RETRYABLE, f"http_{status}") if status >= 500 else (Outcome.REJECTED, f"http_{status}")
    )
    retry_after = parse_retry_after(headers.get("Retry-After")) if outcome is Outcome.RETRYABLE else None
    return SendResult(outcome, reason, status, retry_after)


# ---------------------------------------------------------------------------------------------- SSRF guard


class EndpointRefused(OSError):
    """A push endpoint's host resolved to an address pushsvc must not connect to."""


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the whole answer if any address is internal (unless the host is
    allowed). A mixed answer is refused rather than filtered: a push service never resolves to an internal
    address, so one that does is misconfigured or hostile."""

    def __init__(self, allowed_hosts: Collection[str], inner: AbstractResolver) -> None:
        self._allowed_hosts = allowed_hosts
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_refused(result["host"], host, self._allowed_hosts)
            if problem is not None:
                raise EndpointRefused(f"{host}: {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_problem(url: URL, allowed_hosts: Collection[str]) -> str | None:
    """The SSRF rule for an address-literal host, read as aiohttp reads it (aiohttp connects to a literal
    without asking the resolver). Complements subscriptions.endpoint_problem, which reads the URL with
    urlsplit: two parsers, so that a URL they disagree on is still checked as it is used."""
    host = url.raw_host or ""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    return address_refused(host, host, allowed_hosts)


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
        self._send_timeout = send_timeout
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
        try:
            async with asyncio.timeout(self._send_timeout):
                result = await self._post(push)
        except TimeoutError:
            result = SendResult(Outcome.RETRYABLE, "timeout")
        except Exception as exc:  # a bug or an unforeseen library error must not kill the dispatcher
            log.error("webpush_send_failed", app=self.app_id, origin=push.origin, device=device, error=_short(exc),
                      exc_info=True)
            return SendResult(Outcome.RETRYABLE, "client_error")
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
    "request_headers",
    "topic",
]
