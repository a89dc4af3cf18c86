"""A Huawei Push Kit test peer: the OAuth 2 token endpoint and ``/v1/{app_id}/messages:send``, over TLS.

One TLS listener negotiates ALPN ``h2`` (pushsvc sends messages over HTTP/2) or ``http/1.1`` (it fetches
tokens with httpx over HTTP/1.1); both reach both routes. The HTTP/1.1 and HTTP/2 server side is the one the
FCM simulator uses too (http_server.py). The peer runs on the caller's event loop: the adapter never blocks it.

What it checks, as Push Kit does:
    * ``POST /oauth2/v3/token``: the client-credentials form (grant_type, client_id, client_secret); wrong
      credentials are refused (HTTP 400, Account Kit's error JSON); a granted token lives ``token_lifetime``
      seconds on ``clock`` (both settable, so tests can run an hour in a moment).
    * ``POST /v1/{app_id}/messages:send``: the bearer token (unknown, missing or for another app ->
      80200001, expired -> 80200003, both HTTP 401), then the exact JSON shape: unknown keys anywhere are
      refused (80100003), ``data`` must be a string, ``token`` a list of 1..1000 tokens, android.urgency
      HIGH|NORMAL, android.category only with HIGH, android.ttl "<seconds>s" within 15 days and ending after
      now (80100004), android.collapse_key an integer -1..100 (80100013), android.bi_tag at most 64 bytes, a
      notification's click_action complete, the message without its token at most 4096 bytes (80300008).
Every request is recorded (``requests``, ``token_requests``) whatever the answer.

Usage in tests::

    async with HmsPeer(pki) as peer:
        settings = peer.settings(pki.ca_file)
        peer.script("tok-gone", code="80300007")
        ...
        assert peer.requests_for("tok-1")[0].message["android"]["urgency"] == "HIGH"

Standalone simulator for ``pushsvc dev`` (any client credentials get a token; one JSON line on stdout per
request received, token requests included, secrets never printed)::

    python -m pushsvc.simulators.hms --port 8443 --cert server.pem --key server.key [--app-id 100000001]

The package, one module per part:

    peer.py        HmsPeer: settings, scripts, records; the routes on the shared TLS server (http_server.py)
    oauth.py       the OAuth 2 token endpoint and the check of a bearer token
    messages.py    messages:send: RecordedRequest, the bearer check, scripts or the JSON checks
    checks.py      Push Kit's checks of a message's JSON
    answers.py     the result codes (RESULTS), Push Kit's JSON answer, scripts
    standalone.py  the process entry point (``python -m``, through __main__.py)
"""

from pushsvc.simulators.hms.answers import RESULTS, Script
from pushsvc.simulators.hms.checks import (
    MAX_BI_TAG_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_TOKENS,
    MAX_TTL_SECONDS,
    check_request,
)
from pushsvc.simulators.hms.messages import RecordedRequest
from pushsvc.simulators.hms.oauth import DEFAULT_TOKEN_LIFETIME, TOKEN_PATH, TokenRequest
from pushsvc.simulators.hms.peer import DEFAULT_APP_ID, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, HmsPeer
from pushsvc.simulators.hms.standalone import main

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_TOKEN_LIFETIME",
    "MAX_BI_TAG_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_TOKENS",
    "MAX_TTL_SECONDS",
    "RESULTS",
    "TOKEN_PATH",
    "HmsPeer",
    "RecordedRequest",
    "Script",
    "TokenRequest",
    "check_request",
    "main",
]
