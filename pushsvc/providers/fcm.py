"""FCM HTTP v1 adapter: firebase-admin credentials and message encoding, our own HTTP/2 transport.

What comes from firebase-admin (7.7)
    * the service-account credential (``credentials.Certificate``) in a named firebase app per pushsvc app,
      which yields the project id and the google-auth credential that mints OAuth2 access tokens from the
      service account's ``token_uri``;
    * the message model and its v1 JSON encoding (``messaging.Message`` / ``AndroidConfig`` / ``Notification``,
      and ``APNSConfig`` / ``WebpushConfig`` for a device on those platforms -> ``_MessagingService.encode_message``);
    * the endpoint (``_MessagingService.FCM_URL``, read once at construction) and the mapping of FCM
      error answers to firebase-admin exceptions (``_utils.handle_platform_error_from_httpx`` with
      ``_MessagingService._build_fcm_error_httpx``), which ``classify_error`` turns into an Outcome.

What we do not take from firebase-admin, and why
    * ``send_each_async``'s HTTP stack. Its httpx auth flow refreshes the OAuth token with a *blocking*
      ``requests`` call on the event loop (and builds a new ``requests.Session`` for every message), it
      trusts CAs only through the process environment, and its transport retries 500/503 up to four
      times with backoff inside one call. We keep the one-attempt contract of providers/base.py instead:
      the dispatcher is the only retrier, because it owns the attempt budget, the backoff, the
      Retry-After pause and the retry metrics; hidden retries would multiply attempts (4 x max_attempts),
      hide 5xx answers from the metrics and run past ``send_timeout`` (turning UNAVAILABLE into "timeout").
    * Instead the access token is refreshed off the loop (one shared refresh in a worker thread), on our
      clock ``REFRESH_MARGIN_SECONDS`` before it expires (google-auth's own freshness check reads the wall
      clock), and the HTTP call goes through ``FcmTransport``. The default is ``h2client.H2Transport``: a small HTTP/2
      client on the ``h2`` state machine (multiplexed streams on a pool of connections, flow control,
      GOAWAY), about 2-3x less CPU per message than httpx. ``HttpxTransport`` (httpx over HTTP/2, as
      firebase-admin) remains available as a drop-in.

TLS: both the FCM client and the OAuth token client trust the system CAs (honouring SSL_CERT_FILE /
SSL_CERT_DIR through OpenSSL's default paths) plus ``settings.ca_file``, through SSL contexts of their own;
the process environment and other TLS users are left untouched.

Errors: ``send`` makes one attempt bounded by ``send_timeout`` and never raises for provider, transport
or credential problems. The one exception to "one request per send" is an OAuth token that FCM rejects
with 401 UNAUTHENTICATED: the token is refreshed and the message sent once more, as firebase-admin does;
FCM refused the first request before accepting the message, so nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Callable
from typing import Any

import firebase_admin
import google.auth.exceptions
import orjson
import requests
import requests.adapters
from firebase_admin import credentials, messaging

from pushsvc.config import FcmSettings
from pushsvc.logs import get_logger, mask_token
from pushsvc.metrics import PROVIDER_TOKEN_REFRESHES
from pushsvc.model import Outcome
from pushsvc.providers.base import (
    Delivery,
    PayloadRejected,
    Provider,
    ProviderQuota,
    Rendered,
    SendResult,
    bounded_attempt,
)
from pushsvc.providers.fcm_answers import classify_error as classify_error
from pushsvc.providers.fcm_answers import firebase_error as firebase_error
from pushsvc.providers.fcm_message import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from pushsvc.providers.fcm_message import build_message as build_message
from pushsvc.providers.fcm_message import counted_payload_bytes as counted_payload_bytes
from pushsvc.providers.fcm_message import encode_body as encode_body
from pushsvc.providers.fcm_transport import HttpxTransport as HttpxTransport
from pushsvc.providers.fcm_transport import SslContextAdapter, TokenRequest, endpoint_url, ssl_context
from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.transport import FcmTransport, HttpReply, TransportFailure
from pushsvc.timeouts import FixedTimeouts

log = get_logger(__name__)

_app_names = itertools.count(1)

# The answers that say the project is over its quota: FCM's errorCode QUOTA_EXCEEDED (429 RESOURCE_EXHAUSTED with
# the FcmError detail, fcm_answers.classify_error). A plain 429 without it (a proxy's, or Google's front end
# before the FCM service) is left to the per-delivery backoff.
QUOTA_REASONS = frozenset({"QUOTA_EXCEEDED"})

# An access token is replaced this long before it expires (at most half its lifetime before): google-auth's own
# threshold is 3 min 45 s and Huawei's SDKs use 5 minutes (hms_oauth.py); 5 minutes covers a slow token
# endpoint and a send that picked the token up just before the refresh point.
REFRESH_MARGIN_SECONDS = 300.0
# When the token endpoint gives no expires_in: Google's lifetime for a service account's access token.
DEFAULT_TOKEN_LIFETIME = 3600.0


class FcmProvider(Provider):
    """FCM HTTP v1 for one pushsvc app."""

    name = "fcm"
    # Tokens of another Firebase project than the service account's: a wrong service account or project.
    misconfiguration_reasons = frozenset({"SENDER_ID_MISMATCH"})

    def __init__(
        self,
        app_id: str,
        settings: FcmSettings,
        send_timeout: float,
        transport: FcmTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(app_id)
        self._settings = settings
        self._timeouts = FixedTimeouts(send_timeout)  # every send bounded by it, one loop timer for all
        # Expiry times are absolute on this clock (the service passes the database's); FCM takes a TTL.
        self._clock = clock
        certificate = credentials.Certificate(settings.service_account_file)
        self._firebase_app: firebase_admin.App | None = firebase_admin.initialize_app(
            certificate, name=self._free_app_name(app_id)
        )
        self.project_id: str = self._firebase_app.project_id
        # FCM's quota is per project, across every sender (and so every app of the project).
        self.quota = ProviderQuota(
            scope=f"fcm:{self.project_id}",
            limit=settings.quota_per_window,
            window_seconds=settings.quota_window_seconds,
            backoff_seconds=settings.quota_backoff_seconds,
            reasons=QUOTA_REASONS,
        )
        self._credential = certificate.get_credential()
        self.url = endpoint_url(messaging._MessagingService.FCM_URL.format(self.project_id), settings.endpoint)
        self._token_session = requests.Session()
        self._token_session.mount("https://", SslContextAdapter(ssl_context(settings.ca_file)))
        self._token_request = TokenRequest(self._token_session, timeout=send_timeout)
        self._refresh: asyncio.Future[None] | None = None
        # When the current access token is due for replacement, on self._clock; None before the first one.
        self._refresh_at: float | None = None
        if transport is None:
            # No timer of its own: send() bounds the whole attempt (token and post) with send_timeout.
            transport = H2Transport(ssl_context(settings.ca_file), settings.max_connections, None)
        self._transport: FcmTransport = transport
        self._encoded: dict[tuple[str, str | None, str | None, str, int | None], tuple[Any, Any, dict[str, Any]]] = {}
        self._static_headers = {
            "content-type": "application/json; charset=UTF-8",
            "x-goog-api-format-version": "2",
            "x-firebase-client": f"fire-admin-python/{firebase_admin.__version__}",
        }
        # The request headers for the access token in use, built when it changes (once an hour), not per send.
        self._headers_token: str | None = None
        self._headers: dict[str, str] = self._static_headers

    @staticmethod
    def _free_app_name(app_id: str) -> str:
        name = f"pushsvc-{app_id}"
        while name in firebase_admin._apps:
            name = f"pushsvc-{app_id}-{next(_app_names)}"
        return name

    @property
    def firebase_app(self) -> firebase_admin.App | None:
        return self._firebase_app

    async def start(self) -> None:
        """Fetch the first access token ahead of the first send (failures surface on send)."""
        try:
            await asyncio.wait_for(self._access_token(), self._timeouts.seconds)
        except Exception as exc:
            log.warning("fcm_token_prefetch_failed", app=self.app_id, error=_short(exc))

    def _encode(self, delivery: Delivery) -> bytes:
        """encode_body(build_message(delivery)), with firebase-admin's encoding done once per message variant.

        Within one notification only the token changes between devices of one locale and platform (and the TTL,
        counted in whole seconds), so the encoded v1 message is cached by (notification, variant, locale, platform,
        ttl) and only its "token" is replaced: firebase-admin's Message building and validation was about a third
        of a send's CPU.
        """
        token = delivery.device.token
        if not isinstance(token, str) or not token:
            return encode_body(build_message(delivery))  # raises firebase-admin's ValueError
        now = self._clock()
        ttl = None if delivery.expires_at is None else max(0, int(delivery.expires_at - now))
        key = (delivery.notification_id, delivery.variant, delivery.device.locale, delivery.device.platform, ttl)
        cached = self._encoded.get(key)
        if cached is None or cached[0] is not delivery.message or cached[1] is not delivery.options:
            encoded = messaging._MessagingService.encode_message(build_message(delivery, now))
            if len(self._encoded) >= 1024:
                self._encoded.clear()
            cached = self._encoded[key] = (delivery.message, delivery.options, encoded)
        # The cached message is encoded at once, so it takes this device's token in place of the last one's.
        message = cached[2]
        message["token"] = token
        return orjson.dumps({"message": message})

    def render(self, delivery: Delivery) -> Rendered:
        try:
            body = orjson.loads(self._encode(delivery))
        except (ValueError, TypeError) as exc:
            raise PayloadRejected("invalid_message", str(exc)) from exc
        body["message"]["token"] = mask_token(delivery.device.token)
        return Rendered({"content-type": "application/json"}, body)

    async def validate(self, delivery: Delivery) -> SendResult:
        """FCM checks the message itself without delivering it (`validate_only`, the v1 API's dry run)."""
        return await self.send(delivery, validate_only=True)

    async def send(self, delivery: Delivery, validate_only: bool = False) -> SendResult:
        try:
            body = self._encode(delivery)
        except (ValueError, TypeError) as exc:
            log.warning(
                "fcm_message_invalid", app=self.app_id, device=mask_token(delivery.device.token), error=str(exc)
            )
            return SendResult(Outcome.REJECTED, reason="invalid_message")
        if validate_only:
            body = b'{"validate_only":true,' + body[1:]
        token = delivery.device.token
        return await bounded_attempt(
            self._attempt(body),
            self._timeouts,
            lambda exc: log.error(
                "fcm_send_failed", app=self.app_id, device=mask_token(token), error=_short(exc), exc_info=True
            ),
        )

    async def _attempt(self, body: bytes) -> SendResult:
        # The token in hand, as on every send but those around a refresh: no coroutine to await for it.
        token = self._usable_token() or await self._token_or_failure()
        if isinstance(token, SendResult):
            return token
        try:
            reply = await self._post(token, body)
            if reply.status == 401 and not self._is_third_party_auth(reply):
                # Our access token was rejected (revoked, or expired early): refresh it once and resend.
                self._invalidate(token)
                token = await self._token_or_failure()
                if isinstance(token, SendResult):
                    return token
                reply = await self._post(token, body)
        except TransportFailure as exc:
            return SendResult(Outcome.RETRYABLE, reason=exc.reason)
        if 200 <= reply.status < 300:
            return SendResult(Outcome.DELIVERED, status=reply.status, provider_id=_message_name(reply.body))
        result = classify_error(firebase_error(reply, self.url))
        if result.outcome is Outcome.AUTH_ERROR:
            log.warning("fcm_auth_error", app=self.app_id, status=reply.status, reason=result.reason)
        return result

    async def _token_or_failure(self) -> str | SendResult:
        try:
            return await self._access_token()
        except google.auth.exceptions.RefreshError as exc:
            # invalid_grant (key deleted, wrong account, clock skew) needs an operator; 5xx/429 is transient.
            outcome = Outcome.RETRYABLE if getattr(exc, "retryable", False) else Outcome.AUTH_ERROR
            log.warning("fcm_token_refresh_failed", app=self.app_id, error=_short(exc), outcome=str(outcome))
            return SendResult(outcome, reason="token_refresh_failed")
        except google.auth.exceptions.TransportError as exc:
            log.warning("fcm_token_endpoint_unreachable", app=self.app_id, error=_short(exc))
            return SendResult(Outcome.RETRYABLE, reason="token_connection_error")

    async def _post(self, token: str, body: bytes) -> HttpReply:
        if token is not self._headers_token:
            self._headers = {**self._static_headers, "authorization": f"Bearer {token}"}
            self._headers_token = token
        return await self._transport.post(self.url, self._headers, body)

    @staticmethod
    def _is_third_party_auth(reply: HttpReply) -> bool:
        return b"THIRD_PARTY_AUTH_ERROR" in reply.body or b"APNS_AUTH_ERROR" in reply.body

    # ------------------------------------------------------------------------------------ credentials

    def _usable_token(self) -> str | None:
        """The access token, unless there is none or it is due for refresh."""
        token = self._credential.token
        if token is None or self._refresh_at is None or self._clock() >= self._refresh_at:
            return None
        return token

    async def _access_token(self) -> str:
        """An access token not yet due for refresh; one shared refresh runs in a worker thread (google-auth
        blocks)."""
        cred = self._credential
        while self._usable_token() is None:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._fetch_token())
                # Retrieve the outcome even if every waiting send timed out (no "never retrieved" noise).
                self._refresh.add_done_callback(lambda f: f.cancelled() or f.exception())
            refresh = self._refresh
            # Shielded: a send timing out must not abandon the refresh that other sends wait for.
            await asyncio.shield(refresh)
            if refresh.done() and refresh.exception() is None and cred.token is not None:
                break  # a token just fetched is used even if already due (a tiny expires_in): no refresh loop
        assert cred.token is not None
        return cred.token

    async def _fetch_token(self) -> None:
        # Why: a first token, one past its refresh point, or one FCM refused (_invalidate cleared it).
        reason = "first" if self._refresh_at is None else ("rejected" if self._credential.token is None else "expiry")
        started = self._clock()  # the token's lifetime starts no earlier than the request
        lifetime = await asyncio.get_running_loop().run_in_executor(None, self._refresh_credential)
        self._refresh_at = started + lifetime - min(REFRESH_MARGIN_SECONDS, lifetime / 2)
        PROVIDER_TOKEN_REFRESHES.labels(self.app_id, "fcm", reason).inc()
        log.info("fcm_token_fetched", app=self.app_id, reason=reason, expires_in=round(lifetime))

    def _refresh_credential(self) -> float:
        """In a worker thread: a new access token; returns its remaining lifetime in seconds.

        google-auth keeps only the expiry it computed on the wall clock (now + expires_in); the difference to the
        wall clock right after the refresh is the lifetime, which _fetch_token counts on the provider's clock.
        """
        cred = self._credential
        cred.refresh(self._token_request)
        if cred.expiry is None:
            return DEFAULT_TOKEN_LIFETIME
        return (cred.expiry - dt.datetime.now(dt.UTC).replace(tzinfo=None)).total_seconds()

    def _invalidate(self, rejected: str) -> None:
        # Only if it is still the current token: a concurrent send may have refreshed it already.
        if self._credential.token == rejected:
            self._credential.token = None

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
        await self._transport.aclose()
        self._token_session.close()
        if self._firebase_app is not None:
            firebase_admin.delete_app(self._firebase_app)
            self._firebase_app = None


def _message_name(body: bytes) -> str | None:
    try:
        name = orjson.loads(body).get("name")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
