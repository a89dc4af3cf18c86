"""The FCM peer: one TLS port (http_server.py) routing to the OAuth2 token endpoint (oauth.py) and messages:send
(messages.py), served from a background thread with its own event loop; its settings, scripts and records.

The thread is needed: google-auth refreshes tokens with a *blocking* ``requests`` call; if the peer shared the
test's event loop, a client that refreshes on the loop (as firebase-admin's own httpx auth flow does) would
deadlock against it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pushsvc.simulators.fcm.messages import ERRORS, MessagesEndpoint, Quota, RecordedRequest, Script, fcm_error_body
from pushsvc.simulators.fcm.oauth import DEFAULT_TOKEN_LIFETIME, TokenEndpoint, TokenRequest, to_json
from pushsvc.simulators.http_server import Reply, TlsHttpServer
from pushsvc.simulators.lifecycle import Peer

if TYPE_CHECKING:
    from pushsvc.simulators.tls import TestPki

DEFAULT_PROJECT = "demo-project"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


class _Core:
    """Routes; the shared protocol handlers call ``handle`` from the peer's event loop."""

    def __init__(self, accept_any_auth: bool, log_messages: bool) -> None:
        self.tokens = TokenEndpoint(accept_any_auth)
        self.messages = MessagesEndpoint(self.tokens, accept_any_auth, log_messages)

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, version: str) -> Reply:
        path_only = path.split("?", 1)[0]
        if path_only == "/token":
            if method != "POST":
                return Reply(405, to_json({"error": "invalid_request"}))
            return self.tokens.handle(body)
        match = _SEND_PATH.match(path_only)
        if match:
            if method != "POST":
                return Reply(405, to_json(fcm_error_body(405, "INVALID_ARGUMENT", "Method not allowed", None)))
            return await self.messages.handle(match.group(1), headers, body, version)
        return Reply(404, to_json(fcm_error_body(404, "NOT_FOUND", f"No route for {path_only}", None)))


class FcmPeer(Peer):
    """FCM v1 + OAuth2 token endpoint on one TLS port, run in a background thread with its own loop."""

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        accept_any_auth: bool = False,
        log_messages: bool = False,
    ) -> None:
        if pki is not None:
            cert_file, key_file = pki.cert_file, pki.key_file
        if cert_file is None or key_file is None:
            raise ValueError("FcmPeer needs a TestPki or cert_file and key_file")
        self.host = host
        self.port = port
        self._core = _Core(accept_any_auth, log_messages)
        self._http = TlsHttpServer(self._core, cert_file, key_file)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ---------------------------------------------------------------------------------- public API

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``messages:send`` request received, in arrival order (including unauthorized ones)."""
        return self._core.messages.requests

    @property
    def token_requests(self) -> list[TokenRequest]:
        return self._core.tokens.requests

    @property
    def issued_tokens(self) -> set[str]:
        return self._core.tokens.issued

    @property
    def token_fetches(self) -> int:
        """Access tokens granted so far: one per refresh by a client."""
        return self._core.tokens.fetches

    @property
    def clock(self) -> Callable[[], float]:
        """Epoch seconds access tokens expire by (and requests are stamped with); a test may set a fake one,
        shared with the provider. The JWT assertions google-auth signs are still judged on the wall clock."""
        return self._core.tokens.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._core.tokens.clock = clock

    @property
    def token_lifetime(self) -> float:
        """The expires_in of access tokens issued from now on (an hour, as Google's)."""
        return self._core.tokens.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: float) -> None:
        self._core.tokens.token_lifetime = seconds

    def requests_for(self, token: str) -> list[RecordedRequest]:
        return [r for r in self._core.messages.requests if r.token == token]

    def script(
        self,
        token: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        message: str | None = None,
        times: int | None = None,
    ) -> None:
        """Tell the peer how to answer sends to ``token``.

        error_code: an FCM errorCode (UNREGISTERED, SENDER_ID_MISMATCH, INVALID_ARGUMENT, QUOTA_EXCEEDED,
        UNAVAILABLE, INTERNAL, THIRD_PARTY_AUTH_ERROR); its HTTP status is FCM's unless ``status`` is given.
        status alone: a plain google.rpc error of that status without FcmError detail (or success if < 400).
        message: replaces FCM's message; for INVALID_ARGUMENT the default message and field violation
        say the registration token is invalid, a custom message makes it a payload error.
        retry_after: Retry-After header value (seconds or HTTP date). delay: seconds before answering.
        action: "hang" (never answer) or "close" (drop the connection). times: apply to the next N sends only.
        """
        if action not in (None, "hang", "close"):
            raise ValueError("action must be 'hang' or 'close'")
        if error_code is not None and error_code not in ERRORS:
            raise ValueError(f"unknown FCM error code {error_code!r} (known: {', '.join(ERRORS)})")
        self._core.messages.scripts[token] = Script(
            status=status,
            error_code=error_code,
            message=message,
            retry_after=None if retry_after is None else str(retry_after),
            delay=delay or 0.0,
            action=action,
            times=times,
        )

    def enforce_quota(self, limit: int, window_seconds: float = 60.0, retry_after: float | str | None = None) -> Quota:
        """Enforce a per-project quota from now on, as FCM does (600,000 messages a minute; scale it down): at most
        ``limit`` sends per project in each ``window_seconds`` window of the peer's clock, the others answered
        429 QUOTA_EXCEEDED (with ``retry_after`` if given). Returns the counts: ``seen`` per (project, window
        start), ``refused``."""
        quota = Quota(limit, window_seconds, None if retry_after is None else str(retry_after))
        self._core.messages.quota = quota
        return quota

    @property
    def quota(self) -> Quota | None:
        return self._core.messages.quota

    def revoke_tokens(self) -> None:
        """Forget every issued access token: the next send gets 401 UNAUTHENTICATED."""
        self._core.tokens.issued.clear()
        self._core.tokens.expires_at.clear()

    def reset(self) -> None:
        """Forget scripts, the quota and recorded requests (issued tokens and known service accounts stay valid);
        back to the real clock and an hour's token lifetime."""
        self._core.messages.scripts.clear()
        self._core.messages.quota = None
        self._core.messages.requests.clear()
        self._core.tokens.requests.clear()
        self._core.tokens.clock = time.time
        self._core.tokens.token_lifetime = DEFAULT_TOKEN_LIFETIME

    def write_service_account(self, path: str | Path, project_id: str = DEFAULT_PROJECT) -> Path:
        """Write a service-account JSON with a fresh RSA key whose token_uri points at this peer."""
        return self._core.tokens.write_service_account(path, project_id, self.base_url)

    async def wait_for_requests(self, count: int, within: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` send requests arrived; returns them."""
        deadline = time.monotonic() + within
        while len(self._core.messages.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} FCM requests, got {len(self._core.messages.requests)}")
            await asyncio.sleep(0.01)
        return list(self._core.messages.requests)

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run_thread, name="fcm-peer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._started.wait, 10)
        if self._start_error is not None:
            raise self._start_error
        if not self._started.is_set():
            raise TimeoutError("FCM peer did not start")

    async def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._http.stop(), self._loop)
        await asyncio.wrap_future(future)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self._loop = None

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        self._core.tokens.token_uri = ""  # set once the port is known
        self.port = await self._http.start(self.host, self.port)
        self._core.tokens.token_uri = self.token_uri
