"""An APNs test peer: a TLS + HTTP/2 server on 127.0.0.1 that answers like api.push.apple.com.

It speaks real HTTP/2 (the ``h2`` library, ALPN "h2"), honours flow control in both directions, validates
requests the way Apple does (auth, apns-* headers, payload size) and can be scripted per device token:

    async with ApnsPeer(pki, auth="token", jwt_public_key=pem) as peer:
        peer.script("tok-gone", status=410, reason="Unregistered")
        peer.script("tok-slow", delay=0.5)
        peer.script("tok-dead", action="hang")        # never answers
        peer.script("tok-bye", action="goaway")       # GOAWAY + close instead of an answer
        peer.script("tok-cut", action="close")        # TCP connection dropped, no answer
        peer.script("tok-old", status=410, reason="Unregistered", timestamp_ms=1_700_000_000_000)
        peer.bind_topic("tok-voip", "com.example.app.voip")  # any other topic: 400 DeviceTokenNotForTopic
        ... peer.port, peer.requests, peer.connections_opened ...

Provider tokens are judged on ``peer.clock`` (settable: a test shares a fake clock with the provider): older than
an hour, 403 ExpiredProviderToken. ``peer.provider_tokens`` lists every distinct token accepted (team, key, iat,
first seen, connections); with ``peer.provider_tokens.min_update_seconds = TOKEN_UPDATE_MIN_SECONDS`` a new token
within 20 minutes of the previous one of its key gets 429 TooManyProviderTokenUpdates, as at Apple.

Live Activity pushes (apns-push-type liveactivity) are checked like APNs checks them: the topic must be
``<bundle id>.push-type.liveactivity`` exactly when the push type is liveactivity (else 400 InvalidPushType),
and a certificate-authenticated one is refused (Apple takes them with token auth only; 400 TopicDisallowed is
this peer's choice of reason). APNs does not read the payload: a push with no ``aps.event`` gets its 200 and
the device drops it. So does the peer, and it records what a device would read and would drop it for in
``request.live_activity`` (``.problems`` is empty for a push a device acts on), for tests to assert.

Standalone developer simulator (delivers everything, one JSON line per notification on stdout):

    python -m pushsvc.simulators.apns --port 8443 --cert server.pem --key server.key

The package, one module per part:

    peer.py           ApnsPeer: settings, scripts, recorded requests, the handling of each request
    connection.py     the HTTP/2 server protocol (h2), one per client connection
    checks.py         ReceivedRequest and Apple's checks of a request (method, auth, headers, size)
    live_activity.py  what a device reads from a Live Activity push and would drop it for
    answers.py        Rule, the scripted answers, and the response a rule makes
    provider_tokens.py  the provider tokens seen over time, and Apple's limit on token updates
    credentials.py    a .p8 signing key, a client certificate, ApnsSettings for a running peer
    standalone.py     the process entry point (``python -m``, through __main__.py)
"""

from pushsvc.simulators.apns.answers import Action, Rule
from pushsvc.simulators.apns.checks import (
    JWT_MAX_AGE_SECONDS,
    MAX_COLLAPSE_ID_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_VOIP_PAYLOAD_BYTES,
    AuthMode,
    ReceivedRequest,
)
from pushsvc.simulators.apns.credentials import (
    APNS_KEY_ID,
    APNS_TEAM_ID,
    APNS_TOPIC,
    ApnsClientCert,
    ApnsSigningKey,
    apns_cert_settings,
    apns_token_settings,
    make_client_cert,
    make_signing_key,
)
from pushsvc.simulators.apns.live_activity import (
    LIVE_ACTIVITY_EVENTS,
    LIVE_ACTIVITY_MAX_FUTURE_SECONDS,
    LIVE_ACTIVITY_TOPIC_SUFFIX,
    LiveActivityPush,
    read_live_activity,
)
from pushsvc.simulators.apns.peer import ApnsPeer
from pushsvc.simulators.apns.provider_tokens import TOKEN_UPDATE_MIN_SECONDS, ProviderTokenLog, SeenProviderToken
from pushsvc.simulators.apns.standalone import main

__all__ = [
    "APNS_KEY_ID",
    "APNS_TEAM_ID",
    "APNS_TOPIC",
    "JWT_MAX_AGE_SECONDS",
    "LIVE_ACTIVITY_EVENTS",
    "LIVE_ACTIVITY_MAX_FUTURE_SECONDS",
    "LIVE_ACTIVITY_TOPIC_SUFFIX",
    "MAX_COLLAPSE_ID_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_VOIP_PAYLOAD_BYTES",
    "TOKEN_UPDATE_MIN_SECONDS",
    "Action",
    "ApnsClientCert",
    "ApnsPeer",
    "ApnsSigningKey",
    "AuthMode",
    "LiveActivityPush",
    "ProviderTokenLog",
    "ReceivedRequest",
    "Rule",
    "SeenProviderToken",
    "apns_cert_settings",
    "apns_token_settings",
    "main",
    "make_client_cert",
    "make_signing_key",
    "read_live_activity",
]
