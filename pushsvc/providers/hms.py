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
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from pushsvc.config import HmsSettings
from pushsvc.logs import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, bounded_attempt
from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.hms_message import (
    MAX_BI_TAG_BYTES,
    MAX_MESSAGE_BYTES,
    PARTIAL_SUCCESS,
    RESULT_CODES,
    bi_tag_for,
    build_message,
    check_size,
    classify_answer,
    is_token_rejection,
    message_bytes,
    read_answer,
    request_body,
    ttl_seconds,
)
from pushsvc.providers.hms_oauth import (
    DEFAULT_TOKEN_URL,
    REFRESH_MARGIN_SECONDS,
    TOKEN_FAILURE_HOLD_SECONDS,
    TokenFailure,
    TokenSource,
)
from pushsvc.providers.transport import FcmTransport, HttpReply, TransportFailure
from pushsvc.timeouts import FixedTimeouts

log = get_logger(__name__)

DEFAULT_ENDPOINT = "https://push-api.cloud.huawei.com"

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
        self._timeouts = FixedTimeouts(send_timeout)  # every send bounded by it, one loop timer for all
        # Expiry times are absolute on this clock (the service passes the database's); HMS takes a TTL. Token
        # lifetimes are counted on it too.
        self._clock = clock
        endpoint = (settings.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.url = f"{endpoint}/v1/{urllib.parse.quote(settings.app_id, safe='')}/messages:send"
        self._tokens = TokenSource(app_id, settings, _ssl_context(settings.ca_file), send_timeout, clock)
        # No timer of its own: send() bounds the whole attempt (token and post) with send_timeout.
        self._transport: FcmTransport = H2Transport(_ssl_context(settings.ca_file), settings.max_connections, None)
        self._encoded: dict[tuple[str, str | None, str | None, int | None], tuple[Any, Any, dict[str, Any]]] = {}

    async def start(self) -> None:
        """Fetch the first access token ahead of the first send; a failure is logged, and surfaces on send."""
        try:
            await asyncio.wait_for(self._tokens.token(), self._timeouts.seconds)
        except TokenFailure:
            pass  # logged by TokenSource
        except Exception as exc:
            log.warning("hms_token_prefetch_failed", app=self.app_id, error=_short(exc))

    def _message(self, delivery: Delivery) -> dict[str, Any]:
        """build_message + check_size, once per message variant.

        Within one notification only the token changes between devices of one locale (and the TTL, counted
        in whole seconds): the message is cached by (notification, variant, locale, ttl), as the FCM adapter does.
        """
        now = self._clock()
        ttl = ttl_seconds(delivery.expires_at, now)
        key = (delivery.notification_id, delivery.variant, delivery.device.locale, ttl)
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
        device = mask_token(delivery.device.token)
        return await bounded_attempt(
            self._attempt(body, delivery.device.token),
            self._timeouts,
            lambda exc: log.error("hms_send_failed", app=self.app_id, device=device, error=_short(exc), exc_info=True),
        )

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


# What tests and intake read from here: the message helpers (hms_message.py), the token's timing (hms_oauth.py).
__all__ = [
    "DEFAULT_TOKEN_URL",
    "MAX_BI_TAG_BYTES",
    "MAX_MESSAGE_BYTES",
    "REFRESH_MARGIN_SECONDS",
    "RESULT_CODES",
    "TOKEN_FAILURE_HOLD_SECONDS",
    "HmsProvider",
    "bi_tag_for",
    "build_message",
    "message_bytes",
]
