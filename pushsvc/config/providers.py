"""Per-app provider settings: APNs, FCM, Web Push, Huawei Push Kit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ApnsSettings:
    topic: str
    environment: Literal["production", "sandbox"] = "production"
    # Token auth (preferred): a .p8 signing key with its key id and team id.
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    # Certificate auth: a PEM file holding certificate and private key.
    cert_file: str | None = None
    # Base URL to reach instead of Apple's host (simulators, tests), e.g. https://127.0.0.1:8443
    endpoint: str | None = None
    # Extra CA bundle to trust (a private test CA); verification itself can never be turned off.
    ca_file: str | None = None
    max_connections: int = 10


@dataclass(frozen=True)
class FcmSettings:
    service_account_file: str
    # Base URL to reach instead of Google's FCM host (simulators, tests), e.g. https://127.0.0.1:8443
    endpoint: str | None = None
    ca_file: str | None = None
    max_connections: int = 10
    # FCM's rate quota is per Firebase project, across every sender (600,000 messages a minute by default).
    # quota_per_window: what all replicas together may send to this app's project per quota window, taken
    # from a limiter in MongoDB; none (the default): no shared limiter. Apps of one project share it (the
    # smallest value wins). Set it to the project's quota minus what other senders (the console, other
    # backends) use.
    quota_per_window: int | None = None
    quota_window_seconds: float = 60.0
    # A QUOTA_EXCEEDED answer holds back every send to the project this long at least (a longer Retry-After
    # wins): FCM asks for 60 s. Shorter only in tests.
    quota_backoff_seconds: float = 60.0


@dataclass(frozen=True)
class WebPushSettings:
    """Web Push (RFC 8030) with VAPID (RFC 8292) for the app's browser subscriptions."""

    # The application server's VAPID key: a PEM EC P-256 private key (its public key is the
    # applicationServerKey the web app subscribed with).
    vapid_private_key_file: str
    # The contact in every VAPID token: "mailto:..." or an https URL (RFC 8292 section 2.1).
    subject: str
    # Hosts a subscription endpoint may name although they are, or resolve to, loopback, private or link-local
    # addresses. Empty in production: a registered endpoint must never make pushsvc call an internal service.
    # Tests and `pushsvc dev` list their local push service here.
    allowed_hosts: list[str] = field(default_factory=list)
    # Extra CA bundle to trust (a test push service); verification itself can never be turned off.
    ca_file: str | None = None
    # Connections per push-service origin (each browser vendor's service is one origin).
    max_connections_per_origin: int = 10


@dataclass(frozen=True)
class HmsSettings:
    """Huawei Push Kit (HMS Core) for Android devices without Google services."""

    # The app id in AppGallery Connect (the {app_id} of /v1/{app_id}/messages:send) and its OAuth 2 client.
    app_id: str
    client_id: str
    # The client secret: from a file (a mounted Secret) or the environment (PUSHSVC_APPS__<APP>__HMS__CLIENT_SECRET).
    client_secret_file: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    # Base URLs instead of Huawei's hosts (simulators, tests): the push endpoint and the OAuth token endpoint.
    endpoint: str | None = None
    token_url: str | None = None
    ca_file: str | None = None
    max_connections: int = 10
