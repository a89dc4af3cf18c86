"""An FCM HTTP v1 test peer: OAuth2 token endpoint plus ``messages:send``, over TLS.

One TLS listener negotiates ALPN: ``h2`` (firebase-admin / httpx sends messages over HTTP/2) or
``http/1.1`` (google-auth fetches OAuth tokens with ``requests``). Both protocols reach the same
routes, so either client may use either endpoint (the server side, shared with the Huawei simulator,
is http_server.py).

The peer runs its own event loop in a background thread. google-auth refreshes tokens with a
*blocking* ``requests`` call; if the peer shared the test's event loop, a client that refreshes on
the loop (as firebase-admin's own httpx auth flow does) would deadlock against it.

Usage in tests::

    async with FcmPeer(pki) as peer:
        sa = peer.write_service_account(tmp_path / "sa.json")
        peer.script("tok-gone", error_code="UNREGISTERED")
        quota = peer.enforce_quota(200, window_seconds=2.0)  # FCM's 600,000 a minute, scaled down
        ...
        assert peer.requests[0].body["message"]["token"] == "tok-1"

Standalone simulator (accepts every bearer token and JWT, logs one JSON line per message)::

    python -m pushsvc.simulators.fcm --port 8443 --cert server.pem --key server.key \
        [--write-service-account sa.json --project demo-project]

The package, one module per part:

    peer.py        FcmPeer: its thread and loop, settings, scripts; the routes on the shared TLS server
    oauth.py       Google's OAuth2 token endpoint (JWT assertions) and service-account files
    messages.py    messages:send: RecordedRequest, the bearer check, scripts, FCM's errors and validation
    standalone.py  the process entry point (``python -m``, through __main__.py)
"""

from pushsvc.simulators.fcm.messages import (
    BAD_REQUEST_TYPE,
    ERRORS,
    FCM_ERROR_TYPE,
    MAX_PAYLOAD_BYTES,
    STATUS_NAMES,
    Quota,
    RecordedRequest,
    Script,
    fcm_error_body,
)
from pushsvc.simulators.fcm.oauth import GOOGLE_TOKEN_AUDIENCE, JWT_BEARER_GRANT, TokenRequest
from pushsvc.simulators.fcm.peer import DEFAULT_PROJECT, FcmPeer
from pushsvc.simulators.fcm.standalone import main

__all__ = [
    "BAD_REQUEST_TYPE",
    "DEFAULT_PROJECT",
    "ERRORS",
    "FCM_ERROR_TYPE",
    "GOOGLE_TOKEN_AUDIENCE",
    "JWT_BEARER_GRANT",
    "MAX_PAYLOAD_BYTES",
    "STATUS_NAMES",
    "FcmPeer",
    "Quota",
    "RecordedRequest",
    "Script",
    "TokenRequest",
    "fcm_error_body",
    "main",
]
