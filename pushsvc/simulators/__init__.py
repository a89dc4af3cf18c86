"""Provider simulators: the APNs, FCM, Huawei Push Kit and Web Push peers that `make dev` and the tests run.

Each speaks its provider's real protocol over TLS (HTTP/2 where the provider does), checks requests the way
the provider does, records them and can be scripted per device token to answer with the provider's errors,
delays, hangs or dropped connections. They are product code rather than test code for the same reason httpx
keeps ``MockTransport`` beside its transports: `pushsvc dev` runs them as processes
(``python -m pushsvc.simulators.<name> --port ... --cert ... --key ...``, one JSON line logged per message),
and the tests start them in-process (``async with ApnsPeer(pki) as peer``).

    apns            api.push.apple.com: HTTP/2, token (JWT) or certificate auth, Live Activity checks
    fcm             FCM HTTP v1 messages:send and Google's OAuth2 token endpoint
    hms             Huawei Push Kit messages:send and its OAuth2 token endpoint
    webpush         a browser's push service (RFC 8030) that decrypts every message (RFC 8291) and checks VAPID
    http_server     the TLS HTTP/2 + HTTP/1.1 server fcm and hms share (its HTTP/2 side: http_server_h2)
    tls             a private CA and a server certificate for 127.0.0.1, so TLS verification stays on
    rules           counting down a scripted rule's ``times`` (every peer: ``times=N`` answers the next N)
    lifecycle       starting, serving and stopping a peer: ``async with`` in tests, ``python -m`` for `pushsvc dev`

Each provider is a package of a few modules (the peer, its checks, its scripted answers, its standalone entry
point, ...; its __init__ lists them) that re-exports its public names, so ``pushsvc.simulators.apns.ApnsPeer``
and ``python -m pushsvc.simulators.apns`` work as they always did.

Nothing here is imported by the service itself; importing this package imports none of its modules.
"""
