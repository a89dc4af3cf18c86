"""Build one provider adapter per configured (app, provider)."""

from __future__ import annotations

from pushsvc.config import Settings
from pushsvc.providers.base import Provider


def build_providers(settings: Settings) -> dict[tuple[str, str], Provider]:
    # Imported here so that importing pushsvc does not pull in both provider SDKs.
    from pushsvc.providers.apns import ApnsProvider
    from pushsvc.providers.fcm import FcmProvider

    timeout = settings.dispatch.send_timeout_seconds
    providers: dict[tuple[str, str], Provider] = {}
    for app_id, app in settings.apps.items():
        if app.apns is not None:
            providers[(app_id, "apns")] = ApnsProvider(app_id, app.apns, timeout)
        if app.fcm is not None:
            providers[(app_id, "fcm")] = FcmProvider(app_id, app.fcm, timeout)
    return providers
