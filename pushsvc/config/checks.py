"""Checks across settings (what a single field's type cannot say), credentials read at load."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pushsvc.config.errors import ENV_PREFIX, ConfigError, _Problems
from pushsvc.config.providers import ApnsSettings, FcmSettings, HmsSettings, WebPushSettings
from pushsvc.config.settings import (
    ApiKeySettings,
    AppSettings,
    DispatchSettings,
    FrequencyCapSettings,
    KafkaSettings,
    Settings,
    TracingSettings,
)
from pushsvc.credentials import (
    CredentialError,
    apns_certificate_expiry,
    check_apns_signing_key,
    check_fcm_service_account,
    check_vapid_private_key,
)

# dispatch/quota.py's MIN_LIMIT and HOLD_MAX_SECONDS (config is imported by dispatch, not the other way round).
MIN_QUOTA = 22
HOLD_MAX_SECONDS = 600.0
API_SCOPES = frozenset({"devices:write", "notify", "campaigns", "read", "receipts"})
MIN_LEASE_SECONDS = 2.0
APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_semantics(settings: Settings) -> None:
    """Every independent check runs; all their problems are reported together."""
    problems = _Problems()
    with problems.check():
        if not settings.apps:
            raise ConfigError("apps: at least one app must be configured")
    for app_id, app in settings.apps.items():
        with problems.check():
            _check_app(app_id, app)
    for i, key in enumerate(settings.api_keys):
        with problems.check():
            _check_api_key(i, key, settings)
    with problems.check():
        names = [key.name for key in settings.api_keys]
        if len(set(names)) != len(names):
            raise ConfigError("api_keys: names must be unique (logs and errors name the key)")
    at_least_one = [
        *(("kafka", name) for name in ("max_poll_records", "fetch_max_wait_ms")),
        *(("mongodb", name) for name in ("server_selection_timeout_ms", "connect_timeout_ms", "socket_timeout_ms",
                                         "max_pool_size")),
        ("http", "store_timeout_ms"),
        *(("dispatch", name) for name in ("chunk_size", "concurrency_per_provider", "max_attempts",
                                          "max_active_notifications", "max_batched_notifications",
                                          "misconfig_guard_min_answers", "max_ranges", "max_active_ranges")),
    ]
    with problems.check():
        if settings.dispatch.range_devices < 0:
            raise ConfigError("dispatch.range_devices: must be 0 (never cut) or more")
    for section, name in at_least_one:
        with problems.check():
            if getattr(getattr(settings, section), name) < 1:
                raise ConfigError(f"{section}.{name}: must be at least 1")
    with problems.check():
        _check_kafka_security(settings.kafka)
    with problems.check():
        if not 0 <= settings.mongodb.min_pool_size <= settings.mongodb.max_pool_size:
            raise ConfigError("mongodb.min_pool_size: must be between 0 and mongodb.max_pool_size")
    with problems.check():
        _check_dispatch(settings.dispatch)
    with problems.check():
        if settings.retention.notification_days <= 0:
            raise ConfigError("retention.notification_days: must be greater than 0")
    with problems.check():
        _check_tracing(settings.tracing)
    problems.raise_any()


def _check_kafka_security(kafka: KafkaSettings) -> None:
    tls = kafka.security_protocol in ("SSL", "SASL_SSL")
    sasl = kafka.security_protocol.startswith("SASL_")
    ssl_files = {"ssl_ca_file": kafka.ssl_ca_file, "ssl_cert_file": kafka.ssl_cert_file,
                 "ssl_key_file": kafka.ssl_key_file}
    sasl_values = {"sasl_mechanism": kafka.sasl_mechanism, "sasl_username": kafka.sasl_username,
                   "sasl_password_file": kafka.sasl_password_file, "sasl_password": kafka.sasl_password}
    problems = _Problems()
    for name, value in ssl_files.items():
        with problems.check():
            if value and not tls:
                raise ConfigError(f"kafka.{name}: needs kafka.security_protocol SSL or SASL_SSL")
            if value:
                _require_file(value, f"kafka.{name}")
    with problems.check():
        if kafka.ssl_key_file and not kafka.ssl_cert_file:
            raise ConfigError("kafka.ssl_key_file: needs kafka.ssl_cert_file (the certificate it belongs to)")
    if not sasl:
        for name, value in sasl_values.items():
            with problems.check():
                if value:
                    raise ConfigError(f"kafka.{name}: needs kafka.security_protocol SASL_SSL or SASL_PLAINTEXT")
    else:
        for name in ("sasl_mechanism", "sasl_username"):
            with problems.check():
                if not sasl_values[name]:
                    raise ConfigError(f"kafka.{name}: required with security_protocol {kafka.security_protocol}")
        with problems.check():
            if bool(kafka.sasl_password) == bool(kafka.sasl_password_file):
                raise ConfigError("kafka.sasl_password_file: set exactly one of sasl_password_file or sasl_password")
            if kafka.sasl_password_file:
                _require_file(kafka.sasl_password_file, "kafka.sasl_password_file")
    problems.raise_any()


MAX_CAP_LIMITS = 5
MAX_CAP = 1000  # the pushes remembered per user: a cap is a small number
MAX_CAP_WINDOW_HOURS = 90 * 24


def _check_caps(caps: FrequencyCapSettings, base: str) -> None:
    if not 1 <= len(caps.limits) <= MAX_CAP_LIMITS:
        raise ConfigError(f"{base}.limits: give 1 to {MAX_CAP_LIMITS} limits ({{max, window_hours}})")
    for i, limit in enumerate(caps.limits):
        if not 1 <= limit.max <= MAX_CAP:
            raise ConfigError(f"{base}.limits[{i}].max: must be between 1 and {MAX_CAP}")
        if not 0 < limit.window_hours <= MAX_CAP_WINDOW_HOURS:
            raise ConfigError(f"{base}.limits[{i}].window_hours: must be above 0 and at most {MAX_CAP_WINDOW_HOURS}")
    both = sorted(set(caps.categories) & set(caps.exempt_categories))
    if both:
        raise ConfigError(f"{base}.exempt_categories: {both[0]!r} is also in categories")


def _check_app(app_id: str, app: AppSettings) -> None:
    base = f"apps.{app_id}"
    if not APP_ID.match(app_id):
        # Notification keys are "<app>:<request id>": an app id must not hold the separator.
        raise ConfigError(f"{base}: app ids are 1-64 letters, digits, '.', '_' or '-' (starting alphanumeric)")
    if app.apns is None and app.fcm is None and app.webpush is None and app.hms is None:
        raise ConfigError(f"{base}: configure at least one provider (apns, fcm, hms, webpush)")
    problems = _Problems()
    if app.apns is not None:
        with problems.check():
            _check_apns(app.apns, f"{base}.apns")
    if app.fcm is not None:
        with problems.check():
            _require_file(app.fcm.service_account_file, f"{base}.fcm.service_account_file")
            with _credential():
                check_fcm_service_account(app.fcm.service_account_file, f"{base}.fcm")
            if app.fcm.ca_file:
                _require_file(app.fcm.ca_file, f"{base}.fcm.ca_file")
            if app.fcm.endpoint:
                endpoint_address(app.fcm.endpoint, f"{base}.fcm.endpoint", path_allowed=True)
        with problems.check():
            _check_fcm_quota(app.fcm, f"{base}.fcm")
    if app.webpush is not None:
        with problems.check():
            _check_webpush(app.webpush, f"{base}.webpush")
    if app.hms is not None:
        with problems.check():
            _check_hms(app.hms, f"{base}.hms")
    if app.frequency_caps is not None:
        with problems.check():
            _check_caps(app.frequency_caps, f"{base}.frequency_caps")
    problems.raise_any()


def _check_fcm_quota(fcm: FcmSettings, base: str) -> None:
    problems = _Problems()
    with problems.check():
        if fcm.quota_per_window is not None and fcm.quota_per_window < MIN_QUOTA:
            # dispatch/quota.py cuts the window into slices, each granted a share: below this a slice gets none.
            raise ConfigError(f"{base}.quota_per_window: must be at least {MIN_QUOTA} (or unset: no shared limiter), "
                              f"got {fcm.quota_per_window}")
    with problems.check():
        if fcm.quota_window_seconds < 1:
            # A slice (a twentieth of the window) must outlast a request's trip to the provider.
            raise ConfigError(f"{base}.quota_window_seconds: must be at least 1, got {fcm.quota_window_seconds:g}")
    with problems.check():
        if not 0 < fcm.quota_backoff_seconds <= HOLD_MAX_SECONDS:
            raise ConfigError(f"{base}.quota_backoff_seconds: must be greater than 0 and at most "
                              f"{HOLD_MAX_SECONDS:g} (FCM asks for 60), got {fcm.quota_backoff_seconds:g}")
    problems.raise_any()


def _check_webpush(webpush: WebPushSettings, base: str) -> None:
    _require_file(webpush.vapid_private_key_file, f"{base}.vapid_private_key_file")
    with _credential():
        check_vapid_private_key(webpush.vapid_private_key_file, f"{base}.vapid_private_key_file")
    subject = urlsplit(webpush.subject)
    domain = subject.path.rpartition("@")[2] if subject.scheme == "mailto" else subject.hostname or ""
    if subject.scheme not in ("mailto", "https") or (subject.scheme == "mailto" and "@" not in subject.path):
        raise ConfigError(f"{base}.subject: expected 'mailto:you@example.com' or an https URL (RFC 8292)")
    if "." not in domain.strip(".") or domain.lower().rstrip(".").endswith(("localhost", ".local")):
        # Push services contact the subject's owner; Apple's answers 403 BadJwtToken for a local one.
        raise ConfigError(f"{base}.subject: must name a public domain push services can reach, got {domain!r}")
    for i, host in enumerate(webpush.allowed_hosts):
        # A bare host: "push.example" or an address; "host:port" (one colon) and URLs are refused.
        if not host or "/" in host or host.count(":") == 1:
            raise ConfigError(f"{base}.allowed_hosts[{i}]: a host name or address, without scheme or port")
    if webpush.ca_file:
        _require_file(webpush.ca_file, f"{base}.ca_file")
    if webpush.max_connections_per_origin < 1:
        raise ConfigError(f"{base}.max_connections_per_origin: must be at least 1")


def _check_hms(hms: HmsSettings, base: str) -> None:
    for name in ("app_id", "client_id"):
        if not re.fullmatch(r"[0-9A-Za-z._-]{1,64}", getattr(hms, name)):
            raise ConfigError(f"{base}.{name}: expected the id from AppGallery Connect (letters, digits)")
    if bool(hms.client_secret_file) == bool(hms.client_secret):
        raise ConfigError(
            f"{base}.client_secret_file: required (or the environment's {ENV_PREFIX}APPS__<APP>__HMS__CLIENT_SECRET),"
            " not both"
        )
    if hms.client_secret_file:
        _require_file(hms.client_secret_file, f"{base}.client_secret_file")
        if not Path(hms.client_secret_file).read_text().strip():
            raise ConfigError(f"{base}.client_secret_file: empty")
    for name in ("endpoint", "token_url"):
        if getattr(hms, name):
            endpoint_address(getattr(hms, name), f"{base}.{name}", path_allowed=True)
    if hms.ca_file:
        _require_file(hms.ca_file, f"{base}.ca_file")


def _check_api_key(i: int, key: ApiKeySettings, settings: Settings) -> None:
    problems = _Problems()
    with problems.check():
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", key.hash):
            raise ConfigError(f"api_keys[{i}].hash: must be 'sha256:' followed by 64 hex digits")
    with problems.check():
        if not key.scopes:
            raise ConfigError(f"api_keys[{i}].scopes: required: a key without scopes can call nothing")
        bad = sorted(set(key.scopes) - API_SCOPES)
        if bad:
            raise ConfigError(
                f"api_keys[{i}].scopes: unknown scope {bad[0]!r} (known: {', '.join(sorted(API_SCOPES))})"
            )
    with problems.check():
        if not key.apps:
            raise ConfigError(f"api_keys[{i}].apps: required: the apps this key may act for, or ['*'] for all")
        if "*" in key.apps and len(key.apps) > 1:
            raise ConfigError(f"api_keys[{i}].apps: '*' means every app and stands alone")
        unknown = sorted(set(key.apps) - set(settings.apps) - {"*"})
        if unknown:
            known = ", ".join(sorted(settings.apps))
            raise ConfigError(f"api_keys[{i}].apps: unknown app {unknown[0]!r} (configured: {known})")
    problems.raise_any()


def _check_dispatch(d: DispatchSettings) -> None:
    problems = _Problems()
    with problems.check():
        if not 0 < d.misconfig_guard_share <= 1:
            raise ConfigError(f"dispatch.misconfig_guard_share: must be in (0, 1], got {d.misconfig_guard_share}")
    with problems.check():
        if d.misconfig_guard_window_seconds < 1:
            raise ConfigError(
                "dispatch.misconfig_guard_window_seconds: must be at least 1 (answers count per second)"
            )
    with problems.check():
        if d.send_timeout_seconds <= 0 or d.lease_seconds <= d.send_timeout_seconds:
            raise ConfigError("dispatch.lease_seconds: must be greater than dispatch.send_timeout_seconds")
        if d.lease_seconds < MIN_LEASE_SECONDS:
            # Sending stops a safety margin (a tenth, at least 0.5 s) before a lease ends: shorter leases
            # would spend most of their time inside it.
            raise ConfigError(
                f"dispatch.lease_seconds: must be at least {MIN_LEASE_SECONDS:g}, got {d.lease_seconds:g}"
            )
    for name in ("poll_interval_seconds", "backlog_refresh_seconds"):
        with problems.check():
            if getattr(d, name) <= 0:
                raise ConfigError(f"dispatch.{name}: must be greater than 0, got {getattr(d, name):g}")
    with problems.check():
        if d.max_runs_without_progress < 1:
            raise ConfigError(
                f"dispatch.max_runs_without_progress: must be at least 1, got {d.max_runs_without_progress}"
            )
    problems.raise_any()


def _check_apns(apns: ApnsSettings, base: str) -> None:
    token_auth = [apns.key_file, apns.key_id, apns.team_id]
    if apns.cert_file and any(token_auth):
        raise ConfigError(f"{base}: use either key_file/key_id/team_id (token auth) or cert_file, not both")
    if apns.cert_file:
        _require_file(apns.cert_file, f"{base}.cert_file")
        with _credential():
            apns_certificate_expiry(apns.cert_file, base)
    else:
        for name, value in zip(("key_file", "key_id", "team_id"), token_auth, strict=True):
            if not value:
                raise ConfigError(f"{base}.{name}: required for token auth (or set {base}.cert_file)")
        _require_file(apns.key_file or "", f"{base}.key_file")
        with _credential():
            check_apns_signing_key(apns.key_file or "", apns.key_id or "", apns.team_id or "", base)
    if apns.ca_file:
        _require_file(apns.ca_file, f"{base}.ca_file")
    if apns.endpoint:
        endpoint_address(apns.endpoint, f"{base}.endpoint", path_allowed=False)


# Where an OTLP endpoint may be plain http: a collector on this host (sidecar, node agent on the loopback).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_tracing(tracing: TracingSettings) -> None:
    """Spans name apps, request ids and outcomes: they leave the host over TLS only (http:// is refused unless
    the collector listens on this host's loopback)."""
    problems = _Problems()
    with problems.check():
        if not 0.0 <= tracing.sample_ratio <= 1.0:
            raise ConfigError("tracing.sample_ratio: must be between 0 and 1")
    with problems.check():
        if tracing.export_timeout_seconds <= 0:
            raise ConfigError("tracing.export_timeout_seconds: must be greater than 0")
    with problems.check():
        if not tracing.service_name:
            raise ConfigError("tracing.service_name: must not be empty")
    if tracing.ca_file is not None:
        with problems.check():
            _require_file(tracing.ca_file, "tracing.ca_file")
    url = tracing.otlp_endpoint
    if url is not None:
        with problems.check():
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 (raises for a port out of range)
            except ValueError:
                raise ConfigError(f"tracing.otlp_endpoint: not a URL: {url!r}") from None
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
                raise ConfigError(f"tracing.otlp_endpoint: expected https://host[:port][/path], got {url!r}")
            if parts.username or parts.password:
                raise ConfigError("tracing.otlp_endpoint: must not hold credentials")
            if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
                raise ConfigError(
                    f"tracing.otlp_endpoint: http:// is allowed only to a collector on this host "
                    f"({', '.join(sorted(LOCAL_HOSTS))}); use https:// (TLS is never off), got {url!r}"
                )
    problems.raise_any()


def endpoint_address(url: str, key: str, path_allowed: bool) -> tuple[str, int]:
    """Host and port of a provider `endpoint` setting: one form for APNs and FCM, an https URL
    (https://host[:port], port 443 by default; FCM's may carry a base path). TLS cannot be switched off."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise ConfigError(f"{key}: not a URL: expected https://host[:port], got {url!r}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{key}: expected https://host[:port], got {url!r}")
    if parts.query or parts.fragment or parts.username or (parts.path not in ("", "/") and not path_allowed):
        raise ConfigError(f"{key}: expected https://host[:port] and nothing more, got {url!r}")
    return parts.hostname, port


@contextlib.contextmanager
def _credential() -> Iterator[None]:
    """A credential check (pushsvc.credentials) reported like any other setting's problem."""
    try:
        yield
    except CredentialError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # unreadable although present (permissions, a directory)
        raise ConfigError(f"cannot read a credential file: {exc.strerror}: {exc.filename}") from None


def _require_file(path: str, key: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
