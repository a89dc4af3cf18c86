"""Settings from a YAML file plus PUSHSVC_* environment overrides, validated at start.

Every problem is reported with the dotted key that caused it (``apps.demo.apns.key_id: required``)
so an operator can fix the file without reading code. Credentials are never defaulted.

`settings` holds the top-level dataclasses, `providers` the per-app provider settings, `loading` the file
and environment, `convert` the conversion into dataclasses, `checks` what spans settings and credentials.
"""

from pushsvc.config.checks import API_SCOPES, APP_ID, MIN_LEASE_SECONDS, endpoint_address
from pushsvc.config.convert import EnvText
from pushsvc.config.errors import ENV_PREFIX, ConfigError
from pushsvc.config.loading import load_settings
from pushsvc.config.providers import ApnsSettings, FcmSettings, HmsSettings, WebPushSettings
from pushsvc.config.settings import (
    ApiKeySettings,
    AppSettings,
    CapLimit,
    DispatchSettings,
    FrequencyCapSettings,
    HttpSettings,
    KafkaSettings,
    MongoSettings,
    RetentionSettings,
    Settings,
    TracingSettings,
    configured_providers,
    web_allowed_hosts,
)

__all__ = [
    "API_SCOPES",
    "APP_ID",
    "ENV_PREFIX",
    "MIN_LEASE_SECONDS",
    "ApiKeySettings",
    "ApnsSettings",
    "AppSettings",
    "CapLimit",
    "ConfigError",
    "DispatchSettings",
    "EnvText",
    "FcmSettings",
    "FrequencyCapSettings",
    "HmsSettings",
    "HttpSettings",
    "KafkaSettings",
    "MongoSettings",
    "RetentionSettings",
    "Settings",
    "TracingSettings",
    "WebPushSettings",
    "configured_providers",
    "endpoint_address",
    "load_settings",
    "web_allowed_hosts",
]
