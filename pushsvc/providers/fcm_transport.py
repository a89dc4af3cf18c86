"""FCM's HTTP side that firebase-admin does not give us: the httpx transport, TLS trust, the endpoint URL."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import requests
import requests.adapters
from google.auth.transport import requests as google_auth_requests

from pushsvc.providers.transport import HttpReply, TransportFailure


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


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs (OpenSSL default paths, which honour SSL_CERT_FILE/SSL_CERT_DIR) plus ``ca_file``."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


class SslContextAdapter(requests.adapters.HTTPAdapter):
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


class TokenRequest(google_auth_requests.Request):
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


def endpoint_url(fcm_url: str, endpoint: str | None) -> str:
    """FCM_URL with its scheme and host replaced by ``endpoint`` (a base URL such as https://host:port)."""
    if not endpoint:
        return fcm_url
    base = urlsplit(endpoint)  # an https URL (config.endpoint_address checked it)
    url = urlsplit(fcm_url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + url.path, url.query, ""))
