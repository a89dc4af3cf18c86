"""APNs adapter: one HTTP/2 request per delivery on aioapns 4.0, classified into a SendResult.

What each request carries (body, topic, priority, expiry, per push type) is built in apns_payload.py;
the connection handling (aioapns's pool, our HTTP/2 request handling) in apns_connection.py; the provider
token (one per key, shared by every connection) in apns_token.py; what Apple's answers mean in apns_answers.py.
The one second request: after ExpiredProviderToken, with a new token (``send``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jwt
from aioapns import APNs
from aioapns.connection import APNsBaseConnectionPool
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from h2.exceptions import H2Error
from hpack import NeverIndexedHeaderTuple

from pushsvc.config import ApnsSettings, endpoint_address
from pushsvc.credentials import apns_certificate_expiry
from pushsvc.logs import get_logger, mask_token
from pushsvc.metrics import APNS_CERTIFICATE_EXPIRY
from pushsvc.model import Outcome
from pushsvc.providers.apns_answers import classify as classify
from pushsvc.providers.apns_answers import error_details
from pushsvc.providers.apns_connection import APNS_HOSTS, APNS_PORT, ApnsConnection, ApnsResponse, ApnsStreamReset

# The limits are re-exported: ingest/payload_limits.py and tests read them as apns.MAX_*.
from pushsvc.providers.apns_payload import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from pushsvc.providers.apns_payload import MAX_VOIP_PAYLOAD_BYTES as MAX_VOIP_PAYLOAD_BYTES
from pushsvc.providers.apns_payload import (
    build_payload,
    embeds_send_time,
    expiration_header,
    payload_limit,
    priority_for,
    topic_for,
)
from pushsvc.providers.apns_token import (
    DEFAULT_REFRESH_AGE_SECONDS,
    PROCESS_PROVIDER_TOKENS,
    ProviderToken,
    ProviderTokens,
    ProviderTokenSigner,
)
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, parse_retry_after
from pushsvc.timeouts import FixedTimeouts

log = get_logger(__name__)

# apns-id: a random (version 4) UUID per request, by which APNs names it in its answer. A correlation id, not a
# secret: drawn from one generator seeded by the OS at start, not uuid4()'s os.urandom per push (a system call
# and a UUID object: ~1.5% of an APNs send's CPU).
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker draws its own ids, not its parent's
_V4_BITS = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
_V4_MASK = ~((0xF << 76) | (0x3 << 62))


def new_apns_id() -> str:
    digits = f"{(_ids.getrandbits(128) & _V4_MASK) | _V4_BITS:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"

# Read by tests/unit/test_parsers_property.py as apns._error_details.
_error_details = error_details


class ApnsProvider(Provider):
    name = "apns"
    # A wrong `environment` (sandbox tokens sent to production or the reverse): BadDeviceToken for every
    # token; a wrong `topic`: DeviceTokenNotForTopic for every token.
    misconfiguration_reasons = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})

    def __init__(
        self,
        app_id: str,
        settings: ApnsSettings,
        send_timeout: float,
        clock: Callable[[], float] = time.time,
        token_refresh_age: float = DEFAULT_REFRESH_AGE_SECONDS,
        provider_tokens: ProviderTokens = PROCESS_PROVIDER_TOKENS,
    ) -> None:
        """``clock`` is what provider tokens' ``iat`` is counted on (the service passes the database's);
        ``provider_tokens`` the registry of shared tokens (the process's; a test gives its own)."""
        super().__init__(app_id)
        self._settings = settings
        self._timeouts = FixedTimeouts(send_timeout)  # every send bounded by it, one loop timer for all
        if settings.endpoint:
            host, port_number = endpoint_address(settings.endpoint, "endpoint", path_allowed=False)
        else:
            host, port_number = APNS_HOSTS[settings.environment], APNS_PORT
        # aioapns takes host and port from class constants of the pool's protocol class.
        self._protocol_class: type[ApnsConnection] = type(
            f"ApnsConnection[{app_id}]",
            (ApnsConnection,),
            {"APNS_SERVER": host, "APNS_PORT": port_number, "live": set()},
        )
        if settings.cert_file:
            # Checked at load; exported so an alert fires weeks before APNs starts refusing the connection.
            expires = apns_certificate_expiry(settings.cert_file, f"apps.{app_id}.apns")
            APNS_CERTIFICATE_EXPIRY.labels(app=app_id).set(expires.timestamp())
        # Read the signing key now so a bad path fails at start-up, not at the first push.
        self._signing_key = Path(settings.key_file).read_text() if settings.key_file else None
        # Token auth: the one token of this key, shared with every other app of the process using it.
        self._signer: ProviderTokenSigner | None = None
        if self._signing_key is not None and not settings.cert_file:
            self._signer = provider_tokens.signer(
                settings.team_id or "", settings.key_id or "", self._signing_key, token_refresh_age
            )
        self._clock = clock
        self._client: APNs | None = None
        # (notification, variant, locale) -> (message, options, send second, body): the body never depends on the
        # token.
        self._payloads: dict[tuple[str, str | None, str | None], tuple[Any, Any, int | None, bytes]] = {}

    def _payload(self, delivery: Delivery) -> bytes:
        """build_payload(delivery), built once per (notification, locale): only the token (in the path) varies.

        A Live Activity push without its own timestamp carries its send time, and the device ignores a push
        older than the state it shows: a body cached at the first device and reused minutes later (a slow
        fan-out, a retry) would lose to an update sent in between, or make a later one look stale. Such a body
        is reused within the second it was built only: aps.timestamp counts whole seconds, so within that
        second it is byte for byte what a fresh build would give, and it is built at most once a second.
        """
        key = (delivery.notification_id, delivery.variant, delivery.device.locale)
        second = int(time.time()) if embeds_send_time(delivery) else None
        cached = self._payloads.get(key)
        if (
            cached is None
            or cached[0] is not delivery.message
            or cached[1] is not delivery.options
            or cached[2] != second
        ):
            payload = build_payload(delivery, second)  # TypeError/ValueError propagate and are never cached
            if len(self._payloads) >= 1024:
                self._payloads.clear()
            cached = self._payloads[key] = (delivery.message, delivery.options, second, payload)
        return cached[3]

    async def start(self) -> None:
        self._pool()

    def _pool(self) -> APNsBaseConnectionPool:
        # Built lazily: aioapns's pool captures the event loop in its constructor.
        if self._client is None:
            self._client = self._build_client()
        return self._client.pool

    def _build_client(self) -> APNs:
        s = self._settings
        context = ssl.create_default_context()  # system CAs, hostname check, verification always on
        if s.ca_file:
            context.load_verify_locations(s.ca_file)
        context.set_alpn_protocols(["h2"])  # aioapns doesn't, and APNs speaks HTTP/2 only
        if s.cert_file:
            client = APNs(
                client_cert=s.cert_file, topic=s.topic, max_connections=s.max_connections, ssl_context=context
            )
        else:
            client = APNs(
                key=self._signing_key,
                key_id=s.key_id,
                team_id=s.team_id,
                topic=s.topic,
                max_connections=s.max_connections,
                ssl_context=context,
            )
        client.pool.protocol_class = self._protocol_class
        return client

    def render(self, delivery: Delivery) -> Rendered:
        payload = self._checked_payload(delivery)
        headers = {name: value for name, value in self._headers(delivery, "") if name != "apns-id"}
        return Rendered(headers, json.loads(payload))

    def _checked_payload(self, delivery: Delivery) -> bytes:
        """The payload, or PayloadRejected with the reason APNs would give."""
        if delivery.options.push_type == "liveactivity" and self._settings.cert_file:
            # Apple takes Live Activity pushes over token-based (.p8) connections only: refused here, named,
            # rather than sent to fail at Apple with a reason that does not say why.
            raise PayloadRejected("LiveActivityNeedsTokenAuth")
        try:
            payload = self._payload(delivery)
        except (TypeError, ValueError) as exc:  # NaN/unserialisable data values: the request can never succeed
            raise PayloadRejected("InvalidPayload") from exc
        if len(payload) > payload_limit(delivery.options.push_type):
            raise PayloadRejected("PayloadTooLarge")
        return payload

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            payload = self._checked_payload(delivery)
        except PayloadRejected as exc:
            return SendResult(Outcome.REJECTED, exc.reason)
        apns_id = new_apns_id()
        headers = self._headers(delivery, apns_id)
        token = delivery.device.token
        attempt = _Attempt(sent_at=asyncio.get_running_loop().time())
        try:
            credential = self._signed(lambda signer: signer.current(self.app_id, self._clock()))
            with self._timeouts.bound():
                response = await self._request(attempt, token, headers, payload, credential)
                if credential is not None and _expired_provider_token(response):
                    # The one exception to "one request per send", as FCM's 401: APNs refused the request
                    # before taking the notification, so resending it with a new token delivers it once.
                    renewed = self._renewed(credential, token)
                    if renewed is not None:
                        response = await self._request(attempt, token, headers, payload, renewed)
        except TimeoutError:
            connection = attempt.connection
            if connection is not None and connection.last_received < attempt.sent_at:
                # Not a byte back since we sent: the connection is likely dead (e.g. silently dropped by a
                # NAT); retire it rather than let every later send wait out the timeout on it too.
                connection.retire()
            log.info(
                "apns_send_timeout", app=self.app_id, token=mask_token(token), timeout=self._timeouts.seconds
            )
            return SendResult(Outcome.RETRYABLE, "timeout")
        except (ApnsConnectionError, ConnectionClosed, H2Error, OSError) as exc:
            if attempt.connection is not None and not isinstance(exc, ApnsStreamReset):
                attempt.connection.close()  # drop it from the pool: the next send opens a fresh connection
            log.info(
                "apns_connection_error", app=self.app_id, token=mask_token(token), error=type(exc).__name__
            )
            return SendResult(Outcome.RETRYABLE, "connection_error")
        except _SigningFailed as failed:
            exc = failed.__cause__
            # The provider token could not be signed: the key is unusable. An auth error pauses the app's APNs
            # and pages, instead of an unexplained failure per device. Start-up checks the key
            # (pushsvc.credentials); this catches one that changed or broke since.
            log.warning("apns_signing_failed", app=self.app_id, error=f"{type(exc).__name__}: {exc}"[:300])
            return SendResult(Outcome.AUTH_ERROR, "SigningKeyUnusable")
        return self._result(response, apns_id)

    async def _request(
        self,
        attempt: _Attempt,
        token: str,
        headers: list[tuple[str, str]],
        payload: bytes,
        credential: ProviderToken | None,
    ) -> ApnsResponse:
        # Always our protocol class: _build_client sets it on the pool.
        attempt.connection = cast(ApnsConnection, await self._pool().acquire())
        attempt.sent_at = asyncio.get_running_loop().time()
        authorization = credential.authorization if credential is not None else None
        return await attempt.connection.send_push(token, headers, payload, authorization)

    def _signed(self, sign: Callable[[ProviderTokenSigner], ProviderToken | None]) -> ProviderToken | None:
        """`sign` applied to this app's signer (None with certificate auth); a key that cannot sign raises
        _SigningFailed, so only signing, not the transport's own ValueErrors, is taken for an unusable key."""
        if self._signer is None:
            return None
        try:
            return sign(self._signer)
        except (ValueError, jwt.PyJWTError) as exc:
            raise _SigningFailed from exc

    def _renewed(self, rejected: ProviderToken, token: str) -> ProviderToken | None:
        """The token to resend with after ExpiredProviderToken, or None: then the 403 stands (an auth error)."""
        renewed = self._signed(lambda signer: signer.replace_rejected(rejected, self.app_id, self._clock()))
        log.info("apns_provider_token_expired", app=self.app_id, token=mask_token(token), resent=renewed is not None)
        return renewed

    def _headers(self, delivery: Delivery, apns_id: str) -> list[tuple[str, str]]:
        options = delivery.options
        headers = [
            NeverIndexedHeaderTuple("apns-id", apns_id),
            # VoIP and Live Activity pushes go to their own topics (<topic>.voip, <topic>.push-type.liveactivity).
            ("apns-topic", topic_for(self._settings.topic, options.push_type)),
            ("apns-push-type", options.push_type),
            ("apns-priority", priority_for(options)),
        ]
        expiration = expiration_header(delivery)
        if expiration is not None:
            headers.append(("apns-expiration", expiration))
        if options.collapse_key:
            headers.append(("apns-collapse-id", options.collapse_key))
        return headers

    def _result(self, response: ApnsResponse, apns_id: str) -> SendResult:
        provider_id = response.headers.get("apns-id") or apns_id
        if response.status == 200:
            return SendResult(Outcome.DELIVERED, status=200, provider_id=provider_id)
        reason, invalid_since = error_details(response.status, response.body)
        outcome = classify(response.status, reason)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return SendResult(outcome, reason, response.status, retry_after, provider_id, invalid_since)

    async def close(self) -> None:
        if self._client is None:
            return
        connections = list(self._protocol_class.live)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=2.0)
        self._client = None


class _SigningFailed(Exception):
    """The provider token could not be signed (its cause: the key's error)."""


class _Attempt:
    """Where a send stands, for its failure handling: the connection it last used, and when it sent on it."""

    __slots__ = ("connection", "sent_at")

    def __init__(self, sent_at: float) -> None:
        self.connection: ApnsConnection | None = None
        self.sent_at = sent_at


def _expired_provider_token(response: ApnsResponse) -> bool:
    return response.status == 403 and error_details(403, response.body)[0] == "ExpiredProviderToken"
