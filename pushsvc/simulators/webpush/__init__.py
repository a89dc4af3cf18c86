"""A Web Push test peer: a push service (RFC 8030) on 127.0.0.1 over TLS that decrypts every message (RFC 8291)
and checks every VAPID token (RFC 8292), as a browser's push service and the browser together would.

It hands out subscriptions (a fresh P-256 key pair and 16-byte auth secret each, kept to decrypt with) and
validates each push the way push services do, in this order: the subscription exists (404), the VAPID
token (401: ES256 signature by ``k``, ``aud`` = the origin posted to, ``exp`` in the future and at most 24 h
ahead, ``sub`` a mailto: or https: URI; 403: ``k`` is not the subscription's applicationServerKey), the
headers (400: Content-Encoding aes128gcm, TTL present, Urgency and Topic valid when present), the size
(413 over 4096 bytes) and the record itself (400 when it does not decrypt as one aes128gcm record). Then a
script for the subscription answers, else 201 Created. The decryption is written here from RFC 8291 with
``cryptography``'s primitives, not with http-ece, so that the adapter's use of http-ece is checked by a
second implementation (it is itself checked against RFC 8291's example in the tests).

    async with WebPushPeer(pki) as peer:
        sub = peer.subscribe()                          # sub.endpoint, sub.keys, sub.web_subscription
        other = peer.subscribe(host="localhost")        # a second origin on the same server
        peer.script(sub, status=429, retry_after=30)    # or action="hang" / "close", delay=, times=
        ...
        [push] = peer.pushes_for(sub)                   # push.payload (decrypted JSON), push.headers, ...
        peer.connections_per_origin()                   # {"https://127.0.0.1:PORT": 1, ...}
        peer.tcp_connections                            # TCP connections accepted, handshake or not

HTTP routes besides ``POST /push/<id>`` (the subscription endpoint): ``POST /subscriptions`` (body
optionally ``{"applicationServerKey": "<base64url>"}``) answers 201 with a new PushSubscription JSON
(``{"endpoint", "expirationTime", "keys": {"p256dh", "auth"}}``) whose origin is the one the request was
made to; ``GET /subscriptions/<id>/messages`` lists the decrypted messages that subscription received.

Standalone simulator for ``pushsvc dev`` (checks and delivers like above, logs one JSON line per push with
its decrypted payload on stdout)::

    python -m pushsvc.simulators.webpush --port 8446 --cert server.pem --key server.key \
        [--write-subscription web-subscription.json]

The package, one module per part:

    peer.py        WebPushPeer: the aiohttp server, subscriptions, scripts, recorded pushes
    checks.py      ReceivedPush and a push service's checks of a push, in its order
    vapid.py       RFC 8292: the VAPID token's checks
    decryption.py  RFC 8291: one aes128gcm record decrypted with a subscription's keys
    keys.py        a subscription's keys, a sender's VAPID key, base64url
    answers.py     Rule, the scripted answers and the headers of an answer
    standalone.py  the process entry point (``python -m``, through __main__.py)
"""

from pushsvc.simulators.webpush.answers import Action, Rule
from pushsvc.simulators.webpush.checks import MAX_BODY_BYTES, URGENCIES, ReceivedPush
from pushsvc.simulators.webpush.decryption import DecryptError, decrypt_aes128gcm
from pushsvc.simulators.webpush.keys import (
    PeerSubscription,
    VapidKey,
    b64url,
    b64url_decode,
    make_subscription,
    make_vapid_key,
)
from pushsvc.simulators.webpush.peer import WebPushPeer
from pushsvc.simulators.webpush.standalone import main
from pushsvc.simulators.webpush.vapid import MAX_VAPID_LIFETIME, VapidCheck, check_vapid, parse_vapid

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_VAPID_LIFETIME",
    "URGENCIES",
    "Action",
    "DecryptError",
    "PeerSubscription",
    "ReceivedPush",
    "Rule",
    "VapidCheck",
    "VapidKey",
    "WebPushPeer",
    "b64url",
    "b64url_decode",
    "check_vapid",
    "decrypt_aes128gcm",
    "main",
    "make_subscription",
    "make_vapid_key",
    "parse_vapid",
]
