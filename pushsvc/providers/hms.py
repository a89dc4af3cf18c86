"""Huawei Push Kit (HMS Core) adapter: the v1 REST API for Android devices without Google services.

The API (Huawei's "Sending Messages" reference, HMS-References/push-sendapi)
    * ``POST {endpoint}/v1/{app_id}/messages:send`` with ``Authorization: Bearer <access token>`` and a JSON
      body ``{"validate_only": false, "message": {...}}``; the answer is always ``{"code", "msg",
      "requestId"}``, ``code`` "80000000" meaning accepted (RESULT_CODES below for the rest);
    * the access token from the OAuth 2 client-credentials grant at ``token_url`` (Huawei Account Kit:
      ``grant_type=client_credentials&client_id=..&client_secret=..`` -> ``{"access_token", "expires_in",
      "token_type": "Bearer"}``), valid for ``expires_in`` seconds (an hour).

One token per request: ``message.token`` is a list (up to 1,000), but a per-token answer is only given as
"80100000 some tokens failed" with the failed ones listed; one request per device keeps one classified
SendResult per delivery, as every other provider gives.

Transport
    * Messages go over ``h2client.H2Transport``, the pooled HTTP/2 client FCM uses: push-api.cloud.huawei.com
      serves HTTP/2, and a pool of ``max_connections`` connections multiplexing up to 128 streams each
      carries the dispatcher's concurrency; HTTP/1.1 would allow one request per connection at a time.
    * Tokens come from ``httpx`` (a dependency): a form POST about once an hour, to another host (Account Kit)
      whose HTTP/2 support is not documented, so it must not depend on ALPN h2.
    Both verify TLS against the system CAs plus ``settings.ca_file``; there is no way to turn that off.

Errors: ``send`` makes one attempt bounded by ``send_timeout`` and never raises. The one exception to "one
request per send" is an access token HMS refuses (80200001 / 80200003, or a 401 without a code): the token is
fetched again once and the message sent once more, as Huawei's own server SDKs do (they refresh and resend
on exactly these two codes); HMS refused the first request before accepting the message, so nothing is
delivered twice. A second refusal is an AUTH_ERROR: the sender pauses the provider and retries per its rules.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from pushsvc.config import HmsSettings
from pushsvc.logging import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, parse_retry_after
from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.transport import FcmTransport, HttpReply, TransportFailure

log = get_logger(__name__)

DEFAULT_ENDPOINT = "https://push-api.cloud.huawei.com"
DEFAULT_TOKEN_URL = "https://oauth-login.cloud.huawei.com/oauth2/v3/token"

# ------------------------------------------------------------------------------------------ result codes

SUCCESS = "80000000"
# "Some tokens are successfully sent. Tokens identified by illegal_token are those failed to be sent": with one
# token per request, read from the msg's illegal_tokens whether ours is one of them (classify_answer).
PARTIAL_SUCCESS = "80100000"
# The access token was refused: fetched again once and the message resent (module docstring).
TOKEN_REJECTED = frozenset({"80200001", "80200003"})

# Huawei's result-code table for messages:send, one row per code, each with Huawei's own description. Sources:
# the v1 API reference "Sending Messages" (developer.huawei.com/consumer/en/doc/HMS-References/push-sendapi,
# result codes), Huawei's FAQ on the common server-side codes (HMS Core, 2022: 80200001, 80200003, 80300007,
# 80300010, 80100016), and Push Kit's response reference for the HTTP statuses (push-scenariozed-api-response:
# 400 parameters, 401 authentication, 404 wrong URL, 500 internal, 502 connection, 503 traffic control).
# Codes not listed are classified by their HTTP status (_by_status). Only a token problem deactivates a device.
RESULT_CODES: Mapping[str, Outcome] = {
    SUCCESS: Outcome.DELIVERED,  # Success
    "80100001": Outcome.REJECTED,  # Some request parameters are incorrect
    "80100003": Outcome.REJECTED,  # Incorrect message structure
    "80100004": Outcome.REJECTED,  # The message expiration time is earlier than the current time (ttl)
    "80100013": Outcome.REJECTED,  # The collapse_key message field is invalid
    "80100016": Outcome.REJECTED,  # The message contains sensitive information
    # OAuth authentication error / OAuth token expired: still refused after one new token (module docstring):
    # a wrong client id or secret for this app id, or an access token of another app. Needs an operator.
    "80200001": Outcome.AUTH_ERROR,
    "80200003": Outcome.AUTH_ERROR,
    "80300002": Outcome.AUTH_ERROR,  # The current app does not have the permission to send messages
    "80300007": Outcome.INVALID_TOKEN,  # All tokens are invalid
    "80300008": Outcome.REJECTED,  # The message body size exceeds the default value
    "80300010": Outcome.REJECTED,  # The number of tokens in the message body exceeds the default value
    # You are not authorized to send high-priority messages: refused for this message (urgency HIGH, e.g. VoIP),
    # not for the app's normal-priority ones, so the provider is not paused for it.
    "80300011": Outcome.REJECTED,
    "81000001": Outcome.RETRYABLE,  # System internal error
}
# An answer without a known code (a proxy's page, a flow-control 503). 404 is "service not found: check the
# request URL" (a wrong endpoint or app id): app-wide, so AUTH_ERROR pauses the provider until fixed. Any other
# 4xx fails this delivery and keeps the token; 429 and 5xx (503 is HMS flow control) are temporary.
HTTP_OUTCOMES: Mapping[int, Outcome] = {401: Outcome.AUTH_ERROR, 403: Outcome.AUTH_ERROR, 404: Outcome.AUTH_ERROR}

# "The message body cannot exceed 4096 bytes (excluding token)" (push-sendapi, restrictions).
MAX_MESSAGE_BYTES = 4096
# android.ttl: Push Kit caches a message for at most 15 days. A TTL that ends before the send is refused
# (80100004 "expiration time earlier than the current time"), so a delivery already past its expiry goes out
# with 1s: delivered now or never, as FCM's "0s".
MAX_TTL_SECONDS = 15 * 24 * 3600
MIN_TTL_SECONDS = 1
# android.collapse_key takes a cache group number 1..100 (-1: all offline messages are kept, the default; 0:
# Push Kit's own policy, usually the latest only). Names cannot be mapped onto 100 groups without collisions, and
# a collision would drop an unrelated message of an offline device: only a collapse key that is such a number is
# sent, and it collapses the same messages on APNs and FCM, which take it as a name.
COLLAPSE_GROUPS = range(1, 101)
_GROUP_NUMBER = re.compile(r"[1-9][0-9]{0,2}")
# android.bi_tag comes back in HMS delivery receipts: up to 64 bytes (Push Kit's v3 reference; v1 names no limit).
MAX_BI_TAG_BYTES = 64
# Before expires_in runs out, a token is replaced this long ahead (Huawei's server SDKs: five minutes).
REFRESH_MARGIN_SECONDS = 300.0
# After a failed token fetch, sends within this time get the same failure instead of a new fetch: Account Kit
# flow-controls app-level token requests (a threshold of 1,000 tokens, its client-credentials guide), and a
# storm of fetches during an outage of it would keep the app locked out after the outage.
TOKEN_FAILURE_HOLD_SECONDS = 1.0


# -------------------------------------------------------------------------------------------- encoding


def bi_tag_for(notification_id: str) -> str:
    """The receipt tag of a notification: its id, or for an id over 64 bytes a stable digest of it.

    Pure, so a receipt handler can compute the same tag for a notification it looks up."""
    if len(notification_id.encode()) <= MAX_BI_TAG_BYTES:
        return notification_id
    digest = base64.urlsafe_b64encode(hashlib.sha256(notification_id.encode()).digest()).decode().rstrip("=")
    return f"sha256:{digest}"


def collapse_group(collapse_key: str | None) -> int | None:
    """The HMS cache group for a collapse key: "1".."100" name one; any other key sends none (COLLAPSE_GROUPS)."""
    if collapse_key is None or not _GROUP_NUMBER.fullmatch(collapse_key):
        return None
    group = int(collapse_key)
    return group if group in COLLAPSE_GROUPS else None


def ttl_seconds(expires_at: float | None, now: float) -> int | None:
    """android.ttl in whole seconds, within what HMS accepts (MIN_TTL_SECONDS..MAX_TTL_SECONDS)."""
    if expires_at is None:
        return None
    return min(MAX_TTL_SECONDS, max(MIN_TTL_SECONDS, math.floor(expires_at - now)))


def build_message(delivery: Delivery, now: float) -> dict[str, Any]:
    """The ``message`` object of a messages:send request, without its ``token`` (added per device).

    alert: a notification message (android.notification with the device locale's text); background: a data
    message; voip: a high-priority data message of category VOIP (HMS's scenario for calls), as FCM sends
    VoIP. ``data`` is one string, the JSON object of the data as strings (Message.data_as_strings), which
    the HMS client SDK hands to the app as a map, as FCM's data arrives.
    """
    msg, opts = delivery.message, delivery.options
    android: dict[str, Any] = {"urgency": "HIGH" if opts.priority == "high" else "NORMAL"}
    if opts.push_type == "voip":
        android["category"] = "VOIP"
    ttl = ttl_seconds(delivery.expires_at, now)
    if ttl is not None:
        android["ttl"] = f"{ttl}s"
    group = collapse_group(opts.collapse_key)
    if group is not None:
        android["collapse_key"] = group
    android["bi_tag"] = bi_tag_for(delivery.notification_id)
    if opts.push_type not in ("background", "voip"):
        android["notification"] = _notification(delivery)
    message: dict[str, Any] = {}
    data = msg.data_as_strings()
    if data:
        message["data"] = orjson.dumps(data).decode()
    message["android"] = android
    return message


def _notification(delivery: Delivery) -> dict[str, Any]:
    """android.notification of an alert: the text, a tap opening the app, and the sound."""
    text = delivery.message.text_for(delivery.device.locale)
    notification: dict[str, Any] = {}
    if text.title:
        notification["title"] = text.title
    if text.body:
        notification["body"] = text.body
    notification["click_action"] = {"type": 3}  # 3: open the app's home page (the action HMS requires)
    sound = delivery.message.sound
    if sound and sound != "default":
        notification["sound"] = sound  # a ringtone in the app's res/raw
        notification["default_sound"] = False
    else:
        notification["default_sound"] = True
    return notification


def message_bytes(message: Mapping[str, Any]) -> int:
    """The bytes HMS counts against MAX_MESSAGE_BYTES: the message without its token. Pure, for intake too."""
    return len(orjson.dumps({k: v for k, v in message.items() if k != "token"}))


def check_size(message: Mapping[str, Any]) -> None:
    size = message_bytes(message)
    if size > MAX_MESSAGE_BYTES:
        # The reason HMS itself gives (80300008), so a count means one thing whoever noticed it.
        raise PayloadRejected("80300008", f"message is {size} bytes, over HMS's {MAX_MESSAGE_BYTES}-byte limit")


def request_body(message: Mapping[str, Any], token: str) -> bytes:
    return orjson.dumps({"validate_only": False, "message": {**message, "token": [token]}})


# ------------------------------------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class Answer:
    """A messages:send answer as read: HTTP status and, when the body is HMS's JSON, its fields."""

    status: int
    code: str | None
    msg: str
    request_id: str | None
    retry_after: float | None


def read_answer(reply: HttpReply) -> Answer:
    """Never raises: a body that is not HMS's JSON object leaves code None (classified by status)."""
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code, msg, request_id = body.get("code"), body.get("msg"), body.get("requestId")
    return Answer(
        status=reply.status,
        code=code if isinstance(code, str) else None,
        msg=msg if isinstance(msg, str) else "",
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=parse_retry_after(reply.headers.get("retry-after")),
    )


def is_token_rejection(answer: Answer) -> bool:
    """HMS refused our access token (not the device token): worth one new token."""
    return answer.code in TOKEN_REJECTED or (answer.status == 401 and answer.code not in RESULT_CODES)


def classify_answer(answer: Answer, device_token: str) -> SendResult:
    """The SendResult for a messages:send answer to a request for ``device_token``."""
    if answer.code == PARTIAL_SUCCESS:
        return _partial(answer, device_token)
    outcome = RESULT_CODES.get(answer.code or "")
    if outcome is None:
        outcome = _by_status(answer.status)
    if outcome is Outcome.DELIVERED:
        return SendResult(outcome, status=answer.status, provider_id=answer.request_id)
    reason = answer.code or f"http_{answer.status}"
    retry_after = answer.retry_after if outcome is Outcome.RETRYABLE else None
    return SendResult(outcome, reason, answer.status, retry_after=retry_after, provider_id=answer.request_id)


def _by_status(status: int) -> Outcome:
    if status == 429 or status >= 500:
        return Outcome.RETRYABLE
    if status in HTTP_OUTCOMES:
        return HTTP_OUTCOMES[status]
    # A 2xx that is not "80000000" (an unknown code, or no HMS answer at all) was not accepted as far as we
    # can tell; resending could deliver twice, deactivating could lose a good device: fail this delivery.
    return Outcome.REJECTED


def _partial(answer: Answer, device_token: str) -> SendResult:
    """80100000 for a one-token request: ours failed if the msg lists it in illegal_tokens."""
    try:
        detail = orjson.loads(answer.msg)
    except orjson.JSONDecodeError:
        detail = None
    if isinstance(detail, dict):
        illegal = detail.get("illegal_tokens")
        if isinstance(illegal, list) and device_token in illegal:
            return SendResult(Outcome.INVALID_TOKEN, PARTIAL_SUCCESS, answer.status, provider_id=answer.request_id)
        success = detail.get("success")
        if isinstance(success, int) and success >= 1 and not illegal:
            return SendResult(Outcome.DELIVERED, status=answer.status, provider_id=answer.request_id)
    # Unreadable: whether it was delivered is unknown, and nothing says the token is dead.
    return SendResult(Outcome.REJECTED, PARTIAL_SUCCESS, answer.status, provider_id=answer.request_id)


# ---------------------------------------------------------------------------------------------- OAuth


class TokenFailure(Exception):
    """No access token: ``result`` is what the send that needed one ends with."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    # On the provider's clock. From refresh_at a new token is fetched before the next send; should that fetch
    # fail, this one still serves until usable_until, halfway between refresh_at and its expiry.
    refresh_at: float
    usable_until: float


class TokenSource:
    """The app's OAuth 2 access token (client credentials): cached, replaced REFRESH_MARGIN_SECONDS before it
    expires, fetched by one request however many sends wait for it (single flight)."""

    def __init__(
        self,
        app_id: str,
        settings: HmsSettings,
        ssl_context: ssl.SSLContext,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._app_id = app_id
        self._url = settings.token_url or DEFAULT_TOKEN_URL
        self._client_id = settings.client_id
        self._secret_file = settings.client_secret_file
        self._secret = settings.client_secret
        self._clock = clock
        # Bounded by itself, not only by the sends waiting: a hung token endpoint must not hold the one shared
        # fetch (and every send after it) for ever.
        self._client = httpx.AsyncClient(verify=ssl_context, timeout=httpx.Timeout(timeout), http2=False)
        self._current: AccessToken | None = None
        self._fetch: asyncio.Future[AccessToken] | None = None
        self._failure: tuple[float, TokenFailure] | None = None  # (until, failure) per TOKEN_FAILURE_HOLD_SECONDS

    async def token(self) -> str:
        """A token that is not due for refresh, or one still usable; raises TokenFailure when none is."""
        current = self._current
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        try:
            return (await self._fresh()).value
        except TokenFailure:
            # The refresh failed ahead of the expiry: the current token carries on for a while.
            if current is not None and self._current is current and self._clock() < current.usable_until:
                return current.value
            raise

    async def _fresh(self) -> AccessToken:
        if self._fetch is None or self._fetch.done():
            if self._failure is not None and self._clock() < self._failure[0]:
                raise self._failure[1]
            self._fetch = asyncio.ensure_future(self._fetch_token())
            # Retrieve the outcome even if every waiting send timed out (no "never retrieved" noise).
            self._fetch.add_done_callback(lambda f: f.cancelled() or f.exception())
        # Shielded: a send timing out must not cancel the fetch other sends wait for.
        return await asyncio.shield(self._fetch)

    def invalidate(self, rejected: str) -> None:
        """HMS refused ``rejected``: the next token() fetches anew, unless another send already did."""
        if self._current is not None and self._current.value == rejected:
            self._current = None

    async def _fetch_token(self) -> AccessToken:
        started = self._clock()
        try:
            token = await self._request(started)
        except TokenFailure as failure:
            self._failure = (self._clock() + TOKEN_FAILURE_HOLD_SECONDS, failure)
            raise
        self._current, self._failure = token, None
        return token

    async def _request(self, started: float) -> AccessToken:
        secret = self._read_secret()
        form = {"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": secret}
        headers = {"content-type": "application/x-www-form-urlencoded"}
        try:
            response = await self._client.post(self._url, content=urllib.parse.urlencode(form), headers=headers)
        except httpx.TimeoutException as exc:
            raise self._failed(Outcome.RETRYABLE, "token_timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise self._failed(Outcome.RETRYABLE, "token_connection_error", _short(exc)) from None
        if response.status_code != 200:
            # Huawei's OAuth error JSON (error, sub_error, error_description) names the problem; an endpoint that
            # echoed the form back must still not put the secret in a log line.
            detail = response.text[:300].replace(secret, "***") if secret else response.text[:300]
            transient = response.status_code == 429 or response.status_code >= 500
            outcome = Outcome.RETRYABLE if transient else Outcome.AUTH_ERROR
            retry_after = parse_retry_after(response.headers.get("retry-after")) if transient else None
            raise self._failed(outcome, "token_refresh_failed", detail, response.status_code, retry_after)
        try:
            answer = response.json()
            value, lifetime = answer["access_token"], float(answer["expires_in"])
        except (ValueError, TypeError, KeyError) as exc:
            raise self._failed(Outcome.RETRYABLE, "token_refresh_failed", f"unreadable answer: {_short(exc)}") from None
        if not isinstance(value, str) or not value or not math.isfinite(lifetime):
            raise self._failed(Outcome.RETRYABLE, "token_refresh_failed", "unreadable answer")
        # Counted from before the request: the token's lifetime started no earlier than that.
        margin = min(REFRESH_MARGIN_SECONDS, lifetime / 2)
        refresh_at = started + lifetime - margin
        log.info("hms_token_fetched", app=self._app_id, client_id=self._client_id, expires_in=lifetime)
        return AccessToken(value, refresh_at, refresh_at + margin / 2)

    def _read_secret(self) -> str:
        """From the file on every fetch (about hourly), so a rotated Secret is picked up without a restart."""
        if self._secret_file is None:
            return self._secret or ""
        try:
            return Path(self._secret_file).read_text().strip()
        except OSError as exc:
            raise self._failed(Outcome.AUTH_ERROR, "client_secret_unreadable", exc.strerror or "") from None

    def _failed(
        self, outcome: Outcome, reason: str, detail: str, status: int | None = None, retry_after: float | None = None
    ) -> TokenFailure:
        log.warning(
            "hms_token_fetch_failed",
            app=self._app_id,
            client_id=self._client_id,
            reason=reason,
            http_status=status,
            detail=detail,
            outcome=str(outcome),
        )
        # No status in the SendResult: the push endpoint never answered (the sender's guard counts its answers).
        return TokenFailure(SendResult(outcome, reason, retry_after=retry_after))

    async def aclose(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
        await self._client.aclose()


# -------------------------------------------------------------------------------------------- provider


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs (OpenSSL default paths, which honour SSL_CERT_FILE/SSL_CERT_DIR) plus ``ca_file``."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


class HmsProvider(Provider):
    """Huawei Push Kit for one pushsvc app."""

    name = "hms"
    # A wrong app_id (tokens of another app) makes HMS answer "all tokens are invalid" for every token (Huawei's
    # FAQ on 80300007): the misconfiguration guard watches their share before any device is deactivated.
    misconfiguration_reasons = frozenset({"80300007", PARTIAL_SUCCESS})

    def __init__(
        self,
        app_id: str,
        settings: HmsSettings,
        send_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(app_id)
        self._send_timeout = send_timeout
        # Expiry times are absolute on this clock (the service passes the database's); HMS takes a TTL. Token
        # lifetimes are counted on it too.
        self._clock = clock
        endpoint = (settings.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.url = f"{endpoint}/v1/{urllib.parse.quote(settings.app_id, safe='')}/messages:send"
        self._tokens = TokenSource(app_id, settings, _ssl_context(settings.ca_file), send_timeout, clock)
        # No timer of its own: send() bounds the whole attempt (token and post) with send_timeout.
        self._transport: FcmTransport = H2Transport(_ssl_context(settings.ca_file), settings.max_connections, None)
        self._encoded: dict[tuple[str, str | None, int | None], tuple[Any, Any, dict[str, Any]]] = {}

    async def start(self) -> None:
        """Fetch the first access token ahead of the first send; a failure is logged, and surfaces on send."""
        try:
            await asyncio.wait_for(self._tokens.token(), self._send_timeout)
        except TokenFailure:
            pass  # logged by TokenSource
        except Exception as exc:
            log.warning("hms_token_prefetch_failed", app=self.app_id, error=_short(exc))

    def _message(self, delivery: Delivery) -> dict[str, Any]:
        """build_message + check_size, once per message variant.

        Within one notification only the token changes between devices of one locale (and the TTL, counted
        in whole seconds): the message is cached by (notification, locale, ttl), as the FCM adapter does.
        """
        now = self._clock()
        key = (delivery.notification_id, delivery.device.locale, ttl_seconds(delivery.expires_at, now))
        cached = self._encoded.get(key)
        if cached is None or cached[0] is not delivery.message or cached[1] is not delivery.options:
            message = build_message(delivery, now)
            check_size(message)
            if len(self._encoded) >= 1024:
                self._encoded.clear()
            cached = self._encoded[key] = (delivery.message, delivery.options, message)
        return cached[2]

    def _body(self, delivery: Delivery) -> bytes:
        try:
            return request_body(self._message(delivery), delivery.device.token)
        except PayloadRejected:
            raise
        except (TypeError, ValueError) as exc:  # orjson: a string that is not valid Unicode
            raise PayloadRejected("invalid_message", str(exc)) from exc

    def render(self, delivery: Delivery) -> Rendered:
        self._body(delivery)  # the same checks as a send
        message = {**self._message(delivery), "token": [mask_token(delivery.device.token)]}
        return Rendered({"content-type": "application/json"}, {"validate_only": False, "message": message})

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            body = self._body(delivery)
        except PayloadRejected as exc:
            log.warning(
                "hms_message_invalid", app=self.app_id, device=mask_token(delivery.device.token), error=str(exc)
            )
            return SendResult(Outcome.REJECTED, exc.reason)
        try:
            async with asyncio.timeout(self._send_timeout):  # no extra task per send, unlike wait_for
                return await self._attempt(body, delivery.device.token)
        except TimeoutError:
            return SendResult(Outcome.RETRYABLE, reason="timeout")
        except Exception as exc:  # a bug or an unforeseen library error must not kill the dispatcher
            log.error(
                "hms_send_failed",
                app=self.app_id,
                device=mask_token(delivery.device.token),
                error=_short(exc),
                exc_info=True,
            )
            return SendResult(Outcome.RETRYABLE, reason="client_error")

    async def _attempt(self, body: bytes, device_token: str) -> SendResult:
        try:
            access_token = await self._tokens.token()
            answer = read_answer(await self._post(access_token, body))
            if is_token_rejection(answer):
                # Revoked, or expired before our clock said so: one new token, one resend (module docstring).
                self._tokens.invalidate(access_token)
                access_token = await self._tokens.token()
                answer = read_answer(await self._post(access_token, body))
        except TokenFailure as exc:
            return exc.result
        except TransportFailure as exc:
            return SendResult(Outcome.RETRYABLE, reason=exc.reason)
        result = classify_answer(answer, device_token)
        if result.outcome is Outcome.AUTH_ERROR:
            log.warning(
                "hms_auth_error", app=self.app_id, status=answer.status, reason=result.reason, msg=answer.msg[:200]
            )
        return result

    async def _post(self, access_token: str, body: bytes) -> HttpReply:
        headers = {"content-type": "application/json;charset=utf-8", "authorization": f"Bearer {access_token}"}
        return await self._transport.post(self.url, headers, body)

    async def close(self) -> None:
        await self._transport.aclose()
        await self._tokens.aclose()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
