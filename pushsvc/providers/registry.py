"""Build one provider adapter per configured (app, provider)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pushsvc.config import Settings
from pushsvc.providers.base import Provider


def build_providers(settings: Settings, clock: Callable[[], float] = time.time) -> dict[tuple[str, str], Provider]:
    """`clock` is the one expiry times are counted on (the database's, in the service): FCM sends a TTL
    relative to it, APNs provider tokens carry it as their `iat`, FCM access tokens are refreshed by it."""
    # Imported here so that importing pushsvc does not pull in both provider SDKs.
    from pushsvc.providers.apns import ApnsProvider
    from pushsvc.providers.fcm import FcmProvider

    timeout = settings.dispatch.send_timeout_seconds
    providers: dict[tuple[str, str], Provider] = {}
    for app_id, app in settings.apps.items():
        if app.apns is not None:
            providers[(app_id, "apns")] = ApnsProvider(app_id, app.apns, timeout, clock=clock)
        if app.fcm is not None:
            providers[(app_id, "fcm")] = FcmProvider(app_id, app.fcm, timeout, clock=clock)
        if app.hms is not None:
            from pushsvc.providers.hms import HmsProvider

            providers[(app_id, "hms")] = HmsProvider(app_id, app.hms, timeout, clock=clock)
        if app.webpush is not None:
            from pushsvc.providers.webpush import WebPushProvider

            providers[(app_id, "webpush")] = WebPushProvider(app_id, app.webpush, timeout, clock=clock)
    return providers
