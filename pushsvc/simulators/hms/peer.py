"""The Huawei Push Kit peer: one TLS port (http_server.py) routing to the token endpoint (oauth.py) and
messages:send (messages.py), on the caller's event loop; its settings, scripts and records."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pushsvc.config import HmsSettings
from pushsvc.simulators.hms.answers import RESULTS, make_script, to_json
from pushsvc.simulators.hms.messages import MessagesEndpoint, RecordedRequest
from pushsvc.simulators.hms.oauth import DEFAULT_TOKEN_LIFETIME, TOKEN_PATH, TokenEndpoint, TokenRequest
from pushsvc.simulators.http_server import Reply, TlsHttpServer
from pushsvc.simulators.lifecycle import Peer

if TYPE_CHECKING:
    from pushsvc.simulators.tls import TestPki

DEFAULT_APP_ID = "100000001"
DEFAULT_CLIENT_ID = "100000001"  # AppGallery Connect's OAuth client id of an app is usually its app id
DEFAULT_CLIENT_SECRET = "peer-client-secret-7d1f0c9e4b"
_SEND_PATH = re.compile(r"^/v1/([^/]+)/messages:send$")


class _Core:
    """Routes; the shared protocol handlers call ``handle``."""

    def __init__(self, peer: HmsPeer) -> None:
        self.tokens = TokenEndpoint(peer)
        self.messages = MessagesEndpoint(peer, self.tokens)

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, version: str) -> Reply:
        path_only = path.split("?", 1)[0]
        if path_only == TOKEN_PATH:
            if method != "POST":
                return Reply(405, to_json({"error": 1101, "error_description": "method not allowed"}))
            return await self.tokens.handle(body)
        match = _SEND_PATH.match(path_only)
        if match and method == "POST":
            return await self.messages.handle(urllib.parse.unquote(match.group(1)), headers, body, version)
        return Reply(404, to_json({"code": "404", "msg": f"no route for {method} {path_only}"}))


class HmsPeer(Peer):
    """Push Kit's token endpoint and messages:send on one TLS port, on the caller's event loop."""

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = DEFAULT_APP_ID,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        accept_any_auth: bool = False,
        log_messages: bool = False,
    ) -> None:
        if pki is not None:
            cert_file, key_file = pki.cert_file, pki.key_file
        if cert_file is None or key_file is None:
            raise ValueError("HmsPeer needs a TestPki or cert_file and key_file")
        self.host, self.port = host, port
        self.app_id, self.client_id, self.client_secret = app_id, client_id, client_secret
        # Standalone mode: any client credentials get a token, and any bearer token is taken (a restarted peer
        # does not know the tokens it gave before); tokens it issued still expire.
        self.accept_any_auth = accept_any_auth
        self.log_messages = log_messages
        self.clock: Callable[[], float] = time.time
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME
        self._core = _Core(self)
        self._http = TlsHttpServer(self._core, cert_file, key_file)

    # ---------------------------------------------------------------------------------- public API

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    def settings(self, ca_file: str | Path, **overrides: Any) -> HmsSettings:
        """HmsSettings for this peer's app and client (the secret given inline unless overridden)."""
        values: dict[str, Any] = {
            "app_id": self.app_id, "client_id": self.client_id, "client_secret": self.client_secret,
            "endpoint": self.base_url, "token_url": self.token_url, "ca_file": str(ca_file),
        }
        values.update(overrides)
        return HmsSettings(**values)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every messages:send request received, in arrival order (refused ones included)."""
        return self._core.messages.requests

    @property
    def token_requests(self) -> list[TokenRequest]:
        return self._core.tokens.requests

    def requests_for(self, token: str) -> list[RecordedRequest]:
        return [r for r in self._core.messages.requests if r.token == token]

    def script(
        self,
        token: str,
        *,
        code: str | None = None,
        status: int | None = None,
        msg: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        times: int | None = None,
    ) -> None:
        """How to answer sends to the device ``token`` (after the bearer check, instead of the JSON check).

        code: a result code of RESULTS, with its HTTP status unless ``status`` is given (80100000's msg lists
        the token as failed unless ``msg`` says otherwise). status alone: a plain HTTP answer without HMS's JSON
        (a 503 of flow control, a proxy's 502). retry_after: a Retry-After value. delay: seconds before
        answering. action: "hang" (never answer) or "close" (drop the connection). times: the next N only.
        """
        if code is not None and code not in RESULTS:
            raise ValueError(f"unknown result code {code!r} (known: {', '.join(RESULTS)})")
        self._core.messages.scripts[token] = make_script(code, status, msg, retry_after, delay, action, times)

    def script_token_endpoint(
        self,
        *,
        status: int | None = None,
        msg: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        times: int | None = None,
    ) -> None:
        """How to answer token requests: an HTTP error ``status`` (with ``msg`` as its error_description), a
        ``delay``, or "hang"/"close"; the other arguments as for ``script``."""
        self._core.tokens.script = make_script(None, status, msg, retry_after, delay, action, times)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now: its next use is answered 80200003."""
        now = self.clock()
        for issued in self._core.tokens.issued.values():
            issued.expires_at = min(issued.expires_at, now)

    def revoke_tokens(self) -> None:
        """Forget every issued token: its next use is answered 80200001."""
        self._core.tokens.issued.clear()

    def reset(self) -> None:
        """Forget scripts, records and issued tokens; back to the real clock and an hour's token lifetime."""
        messages, tokens = self._core.messages, self._core.tokens
        messages.scripts.clear()
        tokens.script = None
        messages.requests.clear()
        tokens.requests.clear()
        tokens.issued.clear()
        self.clock = time.time
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME

    def log_line(self, entry: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps({"time": self.clock(), **entry}, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.port = await self._http.start(self.host, self.port)

    async def stop(self) -> None:
        await self._http.stop()
