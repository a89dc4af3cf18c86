"""FCM HTTP v1 adapter: firebase-admin credentials and message encoding, our own HTTP/2 transport.

What comes from firebase-admin (7.7)
    * the service-account credential (``credentials.Certificate``) in a named firebase app per pushsvc app,
      which yields the project id and the google-auth credential that mints OAuth2 access tokens from the
      service account's ``token_uri``;
    * the message model and its v1 JSON encoding (``messaging.Message`` / ``AndroidConfig`` /
      ``APNSConfig`` / ``WebpushConfig`` / ``Notification`` -> ``_MessagingService.encode_message``);
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
    * Instead the access token is refreshed off the loop (one shared refresh in a worker thread) and the
      HTTP call goes through ``FcmTransport``. The default is ``h2client.H2Transport``: a small HTTP/2
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
import itertools
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import firebase_admin
import google.auth.exceptions
import httpx
import orjson
import requests
import requests.adapters
from firebase_admin import _utils, credentials, exceptions, messaging
from google.auth.credentials import TokenState
from google.auth.transport import requests as google_auth_requests

from pushsvc.config import FcmSettings
from pushsvc.logging import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import (
    Delivery,
    PayloadRejected,
    Provider,
    Rendered,
    SendResult,
    bounded_attempt,
    parse_retry_after,
)
from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.transport import FcmTransport, HttpReply, TransportFailure

log = get_logger(__name__)

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_app_names = itertools.count(1)


# --------------------------------------------------------------------------------------------- transport


class HttpxTransport:
    """httpx over HTTP/2 (as firebase-admin's ``send_each_async``), without hidden retries."""

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int, timeout: float) -> None:
        self._client = httpx.AsyncClient(
            http2=True,
            verify=ssl_context,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        try:
            response = await self._client.post(url, headers=headers, content=body)
        except httpx.TimeoutException as exc:
            raise TransportFailure("timeout", type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise TransportFailure("connection_error", f"{type(exc).__name__}: {exc}") from exc
        return HttpReply(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


# -------------------------------------------------------------------------------------------- encoding


# FCM refuses a message whose payload is over 4096 bytes (400 INVALID_ARGUMENT "message is too big").
MAX_PAYLOAD_BYTES = 4096


def counted_payload_bytes(title: str | None, body: str | None, data: Mapping[str, str]) -> int:
    """The bytes FCM counts against MAX_PAYLOAD_BYTES: notification title and body plus data keys and values.

    ("the total size of the payload data ... This includes both the keys and the values", FCM's MessageTooBig.)

    UTF-8, with data as the strings FCM receives (Message.data_as_strings). Pure, so intake can refuse a
    request that would cost one FCM 400 per device (ingest/payload_limits.py) with the same count.
    """
    size = len(title.encode()) if title else 0
    if body:
        size += len(body.encode())
    for key, value in data.items():
        size += len(key.encode()) + len(value.encode())
    return size


def build_message(delivery: Delivery, now: float | None = None) -> messaging.Message:
    """The firebase-admin Message for one delivery (notification block for alerts only)."""
    msg, opts, device = delivery.message, delivery.options, delivery.device
    # voip: a high-priority data-only message (FCM has no PushKit route; its APNs part is a background push).
    background = opts.push_type in ("background", "voip")
    high = opts.priority == "high"
    ttl: int | None = None
    if delivery.expires_at is not None:
        ttl = max(0, int(delivery.expires_at - (time.time() if now is None else now)))

    notification = None
    if not background:
        text = msg.text_for(device.locale)
        notification = messaging.Notification(title=text.title, body=text.body)

    apns_type = "background" if background else opts.push_type
    apns_headers = {"apns-priority": "10" if high and not background else "5", "apns-push-type": apns_type}
    if ttl is not None:
        # APNs: 0 means "deliver now or never"; otherwise the absolute expiry in epoch seconds.
        apns_headers["apns-expiration"] = "0" if ttl == 0 else str(int(delivery.expires_at or 0))
    if opts.collapse_key:
        apns_headers["apns-collapse-id"] = opts.collapse_key
    if background:
        aps = messaging.Aps(content_available=True)
    else:
        aps = messaging.Aps(
            badge=msg.badge,
            sound=msg.sound,
            category=msg.category,
            thread_id=msg.thread_id,
            mutable_content=True if msg.mutable_content else None,
        )

    webpush_headers = {"Urgency": "high" if high else "normal"}
    if ttl is not None:
        webpush_headers["TTL"] = str(ttl)

    message = messaging.Message(
        notification=notification,
        data=msg.data_as_strings() or None,
        android=messaging.AndroidConfig(priority="high" if high else "normal", ttl=ttl, collapse_key=opts.collapse_key),
        apns=messaging.APNSConfig(headers=apns_headers, payload=messaging.APNSPayload(aps=aps)),
        webpush=messaging.WebpushConfig(headers=webpush_headers),
    )
    # Our devices hold FCM registration tokens, which v1 takes in "token". firebase-admin 7.7 marks the
    # constructor's token= as deprecated in favour of fid= (Firebase installation IDs, a different
    # identifier) and warns on every message; setting the attribute encodes the same without the warning.
    message.token = device.token
    return message


def encode_body(message: messaging.Message) -> bytes:
    """The v1 request body, encoded by firebase-admin (validates the message; raises ValueError)."""
    return orjson.dumps({"message": messaging._MessagingService.encode_message(message)})


# ------------------------------------------------------------------------------------- classification


def firebase_error(reply: HttpReply, url: str) -> exceptions.FirebaseError:
    """firebase-admin's own exception for an FCM error answer (UnregisteredError, QuotaExceededError, ...).

    Never raises: firebase-admin's parser assumes Google's error shape (UTF-8 JSON, an "error" object whose
    "details" is a list of objects) and fails on anything else, e.g. a proxy's HTML page or odd JSON; such an
    answer is classified by its HTTP status alone. httpx takes only ASCII header values: others are left out.
    """
    request = httpx.Request("POST", url)
    headers = {k: v for k, v in reply.headers.items() if k.isascii() and v.isascii()}
    response = httpx.Response(reply.status, headers=headers, content=reply.body, request=request)
    error = httpx.HTTPStatusError(f"HTTP {reply.status}", request=request, response=response)
    try:
        return _utils.handle_platform_error_from_httpx(error, messaging._MessagingService._build_fcm_error_httpx)
    except Exception:
        return _utils.handle_httpx_error(error)


def classify_error(error: exceptions.FirebaseError) -> SendResult:
    """Outcome for a firebase-admin exception raised for an FCM answer."""
    response = error.http_response
    status = response.status_code if response is not None else None
    details = _error_details(response)
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == _FCM_ERROR_TYPE), None)
    reason = fcm_code or error.code

    def result(outcome: Outcome, retry_after: float | None = None) -> SendResult:
        return SendResult(outcome, reason=str(reason), status=status, retry_after=retry_after)

    # Order matters: the FCM-specific types subclass the generic ones (SenderIdMismatch is a PermissionDenied).
    if isinstance(error, messaging.UnregisteredError | messaging.SenderIdMismatchError):
        return result(Outcome.INVALID_TOKEN)
    if isinstance(error, messaging.ThirdPartyAuthError):
        return result(Outcome.AUTH_ERROR)
    if isinstance(error, exceptions.InvalidArgumentError):
        token_problem = _is_token_problem(str(error), details)
        return result(Outcome.INVALID_TOKEN if token_problem else Outcome.REJECTED)
    if isinstance(error, exceptions.UnauthenticatedError | exceptions.PermissionDeniedError):
        return result(Outcome.AUTH_ERROR)
    retryable = (
        exceptions.ResourceExhaustedError,  # includes messaging.QuotaExceededError
        exceptions.UnavailableError,
        exceptions.InternalError,
        exceptions.DeadlineExceededError,
    )
    if isinstance(error, retryable) or (status is not None and (status >= 500 or status == 408)):
        return result(Outcome.RETRYABLE, _retry_after(response))
    return result(Outcome.REJECTED)


def _is_token_problem(message: str, details: list[dict[str, Any]]) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than the payload.

    FCM uses INVALID_ARGUMENT for both. For a malformed or foreign token it says so: the message is
    "The registration token is not a valid FCM registration token" and, when present, a BadRequest
    field violation names ``message.token``. Payload errors name other fields ("Invalid value at
    'message.data[0].value'", "Android message is too big", ...). Only a token problem may deactivate
    the device; anything unclear stays REJECTED, which fails that delivery but keeps the token.
    """
    for detail in details:
        violations = detail.get("fieldViolations")
        if detail.get("@type") == _BAD_REQUEST_TYPE and isinstance(violations, list):
            fields = [str(v.get("field", "")) for v in violations if isinstance(v, dict)]
            if fields:
                return all(f == "message.token" for f in fields)
    return "registration token" in message.lower()


def _error_details(response: Any) -> list[dict[str, Any]]:
    if response is None:
        return []
    try:
        details = response.json().get("error", {}).get("details", [])
    except (ValueError, AttributeError, RecursionError):  # not JSON (or not UTF-8), not objects, too deep
        return []
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_after(response: Any) -> float | None:
    return parse_retry_after(response.headers.get("retry-after") if response is not None else None)


# --------------------------------------------------------------------------------------------- TLS


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs (OpenSSL default paths, which honour SSL_CERT_FILE/SSL_CERT_DIR) plus ``ca_file``."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


class _SslContextAdapter(requests.adapters.HTTPAdapter):
    """requests adapter verifying with our SSL context (requests alone only takes a CA bundle path)."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(*args, **kwargs)


class _TokenRequest(google_auth_requests.Request):
    """google-auth transport for the token endpoint, with our TLS trust and a bounded timeout."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session)
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(url, method, body, headers, timeout=timeout or self._timeout, **kwargs)


def _endpoint_url(fcm_url: str, endpoint: str | None) -> str:
    """FCM_URL with its scheme and host replaced by ``endpoint`` (a base URL such as https://host:port)."""
    if not endpoint:
        return fcm_url
    base = urlsplit(endpoint)  # an https URL (config.endpoint_address checked it)
    url = urlsplit(fcm_url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + url.path, url.query, ""))


# -------------------------------------------------------------------------------------------- provider


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
        self._send_timeout = send_timeout
        # Expiry times are absolute on this clock (the service passes the database's); FCM takes a TTL.
        self._clock = clock
        certificate = credentials.Certificate(settings.service_account_file)
        self._app: firebase_admin.App | None = firebase_admin.initialize_app(
            certificate, name=self._free_app_name(app_id)
        )
        self.project_id: str = self._app.project_id
        self._credential = certificate.get_credential()
        self.url = _endpoint_url(messaging._MessagingService.FCM_URL.format(self.project_id), settings.endpoint)
        self._token_session = requests.Session()
        self._token_session.mount("https://", _SslContextAdapter(_ssl_context(settings.ca_file)))
        self._token_request = _TokenRequest(self._token_session, timeout=send_timeout)
        self._refresh: asyncio.Future[None] | None = None
        if transport is None:
            # No timer of its own: send() bounds the whole attempt (token and post) with send_timeout.
            transport = H2Transport(_ssl_context(settings.ca_file), settings.max_connections, None)
        self._transport: FcmTransport = transport
        self._encoded: dict[tuple[str, str | None, int | None], tuple[Any, Any, dict[str, Any]]] = {}
        self._static_headers = {
            "content-type": "application/json; charset=UTF-8",
            "x-goog-api-format-version": "2",
            "x-firebase-client": f"fire-admin-python/{firebase_admin.__version__}",
        }

    @staticmethod
    def _free_app_name(app_id: str) -> str:
        name = f"pushsvc-{app_id}"
        while name in firebase_admin._apps:
            name = f"pushsvc-{app_id}-{next(_app_names)}"
        return name

    @property
    def firebase_app(self) -> firebase_admin.App | None:
        return self._app

    async def start(self) -> None:
        """Fetch the first access token ahead of the first send (failures surface on send)."""
        try:
            await asyncio.wait_for(self._access_token(), self._send_timeout)
        except Exception as exc:
            log.warning("fcm_token_prefetch_failed", app=self.app_id, error=_short(exc))

    def _encode(self, delivery: Delivery) -> bytes:
        """encode_body(build_message(delivery)), with firebase-admin's encoding done once per message variant.

        Within one notification only the token changes between devices of one locale (and the TTL, counted
        in whole seconds), so the encoded v1 message is cached by (notification, locale, ttl) and only its
        "token" is replaced: firebase-admin's Message building and validation was about a third of a send's CPU.
        """
        token = delivery.device.token
        if not isinstance(token, str) or not token:
            return encode_body(build_message(delivery))  # raises firebase-admin's ValueError
        now = self._clock()
        ttl = None if delivery.expires_at is None else max(0, int(delivery.expires_at - now))
        key = (delivery.notification_id, delivery.device.locale, ttl)
        cached = self._encoded.get(key)
        if cached is None or cached[0] is not delivery.message or cached[1] is not delivery.options:
            encoded = messaging._MessagingService.encode_message(build_message(delivery, now))
            if len(self._encoded) >= 1024:
                self._encoded.clear()
            cached = self._encoded[key] = (delivery.message, delivery.options, encoded)
        message = dict(cached[2])
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
        device = mask_token(delivery.device.token)
        return await bounded_attempt(
            self._attempt(body),
            self._send_timeout,
            lambda exc: log.error("fcm_send_failed", app=self.app_id, device=device, error=_short(exc), exc_info=True),
        )

    async def _attempt(self, body: bytes) -> SendResult:
        token = await self._token_or_failure()
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
        headers = {**self._static_headers, "authorization": f"Bearer {token}"}
        return await self._transport.post(self.url, headers, body)

    @staticmethod
    def _is_third_party_auth(reply: HttpReply) -> bool:
        return b"THIRD_PARTY_AUTH_ERROR" in reply.body or b"APNS_AUTH_ERROR" in reply.body

    # ------------------------------------------------------------------------------------ credentials

    async def _access_token(self) -> str:
        """A fresh OAuth2 access token; one shared refresh runs in a worker thread (google-auth blocks)."""
        cred = self._credential
        while cred.token_state is not TokenState.FRESH:
            if self._refresh is None or self._refresh.done():
                loop = asyncio.get_running_loop()
                self._refresh = loop.run_in_executor(None, cred.refresh, self._token_request)
                # Retrieve the outcome even if every waiting send timed out (no "never retrieved" noise).
                self._refresh.add_done_callback(lambda f: f.cancelled() or f.exception())
            refresh = self._refresh
            # Shielded: a send timing out must not abandon the refresh that other sends wait for.
            await asyncio.shield(refresh)
            if refresh.done() and refresh.exception() is None and cred.token_state is not TokenState.FRESH:
                break  # the token endpoint granted a token that is already stale (tiny expires_in): use it
        return cred.token

    def _invalidate(self, rejected: str) -> None:
        # Only if it is still the current token: a concurrent send may have refreshed it already.
        if self._credential.token == rejected:
            self._credential.token = None

    async def close(self) -> None:
        await self._transport.aclose()
        self._token_session.close()
        if self._app is not None:
            firebase_admin.delete_app(self._app)
            self._app = None


def _message_name(body: bytes) -> str | None:
    try:
        name = orjson.loads(body).get("name")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
