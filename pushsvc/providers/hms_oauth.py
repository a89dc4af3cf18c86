"""Huawei Push Kit's access token: the OAuth 2 client-credentials grant at Account Kit, cached per app and
replaced before it expires, one request however many sends wait for it (providers/hms.py uses it).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from pushsvc.config import HmsSettings
from pushsvc.logs import get_logger
from pushsvc.model import Outcome
from pushsvc.providers.base import SendResult, parse_retry_after

log = get_logger(__name__)

DEFAULT_TOKEN_URL = "https://oauth-login.cloud.huawei.com/oauth2/v3/token"

# Before expires_in runs out, a token is replaced this long ahead (Huawei's server SDKs: five minutes).
REFRESH_MARGIN_SECONDS = 300.0
# After a failed token fetch, sends within this time get the same failure instead of a new fetch: Account Kit
# flow-controls app-level token requests (a threshold of 1,000 tokens, its client-credentials guide), and a
# storm of fetches during an outage of it would keep the app locked out after the outage.
TOKEN_FAILURE_HOLD_SECONDS = 1.0


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


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
